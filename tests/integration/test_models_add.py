"""``trtbatch models add`` on the model folders users bring, built for real with Paddle 2.6: every
accepted layout lands in the repository as ``inference.pdmodel`` + ``inference.pdiparams`` computing
the same function, the manifest is completed from the program, and what cannot be served is refused
with one line saying why. Commands run through click's CliRunner in this process (Paddle is imported
once); one refusal goes through the real entry point to show the one-line error."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from cli import cli
from common.errors import ModelError
from common.manifest import MANIFEST_FILE, MODEL_FILE, PARAMS_FILE, ModelManifest
from tests.helpers import REPO_ROOT, RedisServer
from tests.workers.engines import paddle_layouts as layouts


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models-add")
    return {"TRTBATCH_REDIS_URL": redis_server.url, "TRTBATCH_MODEL_REPO": str(root / "repo"),
            "TRTBATCH_CACHE_DIR": str(root / "cache"), "TRTBATCH_STATE_DIR": str(root / "state")}


def trtbatch(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)


def ok(env: dict[str, str], *args: str) -> str:
    result = trtbatch(env, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def refusal(env: dict[str, str], *args: str) -> str:
    """The one-line reason a command was refused (``cli.main`` prints it as ``error: ...``)."""
    result = trtbatch(env, *args)
    assert isinstance(result.exception, ModelError), (result.output, result.exception)
    message = str(result.exception)
    assert "\n" not in message and len(message) < 400
    return message


def installed(env: dict[str, str], name: str) -> tuple[Path, ModelManifest]:
    folder = Path(env["TRTBATCH_MODEL_REPO"]) / name
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        sorted([MANIFEST_FILE, MODEL_FILE, PARAMS_FILE])
    return folder, ModelManifest.load(folder)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- layouts ------------------------------------------------------------------------------------
def test_jit_save_under_any_prefix(env: dict[str, str], tmp_path: Path) -> None:
    src = layouts.jit_saved(tmp_path, prefix="mynet", name="image")
    out = ok(env, "models", "add", str(src), "--name", "jit-prefix")
    assert "added jit-prefix" in out
    folder, manifest = installed(env, "jit-prefix")
    assert manifest.input.name == "image" and manifest.input.shape == (-1, 3, 32, 32)
    assert sha(folder / MODEL_FILE) == sha(src / "mynet.pdmodel")  # renamed, not rewritten: same version hash
    assert sha(folder / PARAMS_FILE) == sha(src / "mynet.pdiparams")
    # one .pdmodel named on the command line works the same
    ok(env, "models", "add", str(src / "mynet.pdmodel"), "--name", "jit-file")


@pytest.mark.parametrize("layout", ["prefix", "__model__", "model", "separate"])
def test_static_graph_layouts(env: dict[str, str], tmp_path: Path, layout: str) -> None:
    """save_inference_model under a prefix, Paddle 1.x's combined files under both names, and
    ``__model__`` with one file per parameter (what ``paddle.inference.Config(model_dir)`` loads)."""
    src, ref = layouts.static_saved(tmp_path, layout)
    name = f"static-{layout.replace('_', 'u')}"
    ok(env, "models", "add", str(src), "--name", name)
    folder, manifest = installed(env, name)
    assert manifest.input.name == "img"
    np.testing.assert_allclose(layouts.run_paddle(folder, layouts.probe_batch()), ref, rtol=1e-5, atol=1e-6)


def test_dynamic_size_is_fixed_by_the_manifest(env: dict[str, str], tmp_path: Path) -> None:
    src = layouts.jit_saved(tmp_path, shape=(None, 3, None, None))
    out = ok(env, "models", "add", str(src), "--name", "dyn")
    assert "note: the program's input has a dynamic size [3, -1, -1]; the manifest fixes it at 3x224x224" in out
    assert installed(env, "dyn")[1].input.shape == (-1, 3, 224, 224)
    # an exact resize without --crop means no crop (before: "preprocess gives [224, 224] images")
    ok(env, "models", "add", str(src), "--name", "dyn-rec", "--shape", "3,48,192", "--resize", "48,192")
    pre = installed(env, "dyn-rec")[1].preprocess
    assert (pre.resize, pre.crop) == ((48, 192), ())


def test_padding_and_bgr_options(env: dict[str, str], tmp_path: Path) -> None:
    src = layouts.jit_saved(tmp_path, shape=(None, 3, None, None))
    ok(env, "models", "add", str(src), "--name", "ocr-rec", "--shape", "3,48,192", "--fit", "height",
       "--pad-value", "127.5", "--mean", "0.5", "--std", "0.5", "--color", "BGR")
    pre = installed(env, "ocr-rec")[1].preprocess
    assert (pre.color, pre.resize, pre.crop, pre.fit, pre.pad_value, pre.pad_align) == \
        ("BGR", (48, 192), (), "height", 127.5, "topleft")
    ok(env, "models", "add", str(src), "--name", "det", "--resize", "64,64", "--fit", "pad", "--pad-align", "center",
       "--pad-value", "114")
    manifest = installed(env, "det")[1]
    assert manifest.input.shape == (-1, 3, 64, 64)
    assert (manifest.preprocess.fit, manifest.preprocess.pad_align, manifest.preprocess.pad_value) == \
        ("pad", "center", 114)
    assert "fit pad pad 114 center" in ok(env, "models", "show", "det")
    message = refusal(env, "models", "add", str(src), "--name", "bad-pad", "--resize", "64,64", "--fit", "pad",
                      "--crop", "60,60")
    assert "preprocess.fit = 'pad' pads to the resize size; remove preprocess.crop" in message


def test_softmax_at_the_end_of_the_graph_is_applied_once(env: dict[str, str], tmp_path: Path) -> None:
    from workers.pipeline.postprocess import postprocess

    src = layouts.jit_saved(tmp_path, softmax=True)
    out = ok(env, "models", "add", str(src), "--name", "softmaxed")
    assert "already ends in a softmax: postprocess.softmax = false" in out
    folder, manifest = installed(env, "softmaxed")
    assert manifest.postprocess.softmax is False
    probs = layouts.run_paddle(folder, layouts.probe_batch())
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    name = next(iter(jit_outputs(folder)))
    records = postprocess({name: probs}, manifest.postprocess, k=5)
    for row, record in zip(probs, records, strict=True):
        scores = sorted((r["score"] for r in record["top_k"]), reverse=True)
        np.testing.assert_allclose(scores, sorted(row.tolist(), reverse=True), atol=1e-6)  # not softmaxed twice


def jit_outputs(folder: Path) -> list[str]:
    from workers.engines.model_info import model_info

    return model_info(folder, "paddle").output_names


def test_onnx_file(env: dict[str, str], tmp_path: Path) -> None:
    src = layouts.onnx_model(tmp_path / "net.onnx", softmax=True)
    out = ok(env, "models", "add", str(src), "--name", "onnx-net", "--shape", "3,8,8", "--resize", "8,8")
    assert "already ends in a softmax" in out
    manifest = ModelManifest.load(Path(env["TRTBATCH_MODEL_REPO"]) / "onnx-net")
    assert manifest.format == "onnx" and manifest.postprocess.softmax is False


# -- the repository's own models -----------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(env: dict[str, str]) -> Path:
    ok(env, "models", "make", "digits", "--epochs", "1")
    return Path(env["TRTBATCH_MODEL_REPO"]) / "digits"


def test_models_made_here_add_unchanged(env: dict[str, str], digits: Path) -> None:
    ok(env, "models", "add", str(digits), "--name", "digits-copy")
    folder, manifest = installed(env, "digits-copy")
    assert sha(folder / MODEL_FILE) == sha(digits / MODEL_FILE)
    assert manifest.preprocess == ModelManifest.load(digits).preprocess  # from its model.toml
    ok(env, "models", "make", "resnet50")
    ok(env, "models", "add", str(Path(env["TRTBATCH_MODEL_REPO"]) / "resnet50"), "--name", "resnet50-copy")
    assert installed(env, "resnet50-copy")[1].preprocess.crop == (224, 224)


def test_export_images_does_not_retrain_an_existing_model(env: dict[str, str], digits: Path, tmp_path: Path) -> None:
    before = (sha(digits / MODEL_FILE), sha(digits / PARAMS_FILE), (digits / MANIFEST_FILE).read_text())
    out = ok(env, "models", "make", "digits", "--export-images", str(tmp_path / "images"))
    assert "not retrained" in out and "held-out accuracy" not in out
    assert (sha(digits / MODEL_FILE), sha(digits / PARAMS_FILE), (digits / MANIFEST_FILE).read_text()) == before
    rows = (tmp_path / "images" / "labels.csv").read_text().splitlines()
    assert rows[0] == "path,label"
    assert len(rows) - 1 == ModelManifest.load(digits).metrics["held_out_images"]  # the model's own held-out split
    assert len(list((tmp_path / "images").glob("digit_*.png"))) == len(rows) - 1


def ptq_version(digits: Path, out: Path) -> Path:
    """What a ``trtbatch calibrate --method ptq`` job makes of digits (workers/pipeline/calibration.ptq)."""
    from tools.modelmake import digits_data, preprocess_all
    from workers.engines import quantize

    manifest = ModelManifest.load(digits)
    out.mkdir()
    quantize.run_ptq(digits, out, manifest.input.name, preprocess_all(manifest, digits_data().train_png[:32]),
                     "abs_max", 16)
    quantize.quantized_manifest(manifest, "digits", {"method": "ptq", "algo": "abs_max"}).save(out)
    return out


def test_quantized_models(env: dict[str, str], digits: Path, tmp_path: Path) -> None:
    ptq = ptq_version(digits, tmp_path / "ptq")
    out = ok(env, "models", "add", str(ptq), "--quantized", "--base", "digits", "--name", "digits@int8-ptq", "--json")
    assert '"quantize_linear"' in out
    assert installed(env, "digits@int8-ptq")[1].quantized
    # the same program as a PaddleSlim export without a manifest: preprocessing comes from the base
    slim = tmp_path / "slim"
    slim.mkdir()
    os.link(ptq / MODEL_FILE, slim / "__model__")
    os.link(ptq / PARAMS_FILE, slim / "__params__")
    out = ok(env, "models", "add", str(slim), "--quantized", "--base", "digits", "--name", "digits@slim")
    assert "from the base model 'digits'" in out
    manifest = installed(env, "digits@slim")[1]
    assert (manifest.base, manifest.preprocess) == ("digits", ModelManifest.load(digits).preprocess)
    message = refusal(env, "models", "add", str(digits), "--quantized", "--base", "digits", "--name", "digits@fp32")
    assert message == ("registered as quantized, but the program has no quantize/dequantize ops; "
                       "is this the FP32 model?")


def test_qat_export(env: dict[str, str], tmp_path: Path) -> None:
    ok(env, "models", "add", str(layouts.jit_saved(tmp_path / "fp32")), "--name", "net")
    (tmp_path / "qat").mkdir()
    qat = layouts.qat_saved(tmp_path / "qat")
    ok(env, "models", "add", str(qat), "--quantized", "--base", "net", "--name", "net@qat")
    manifest = installed(env, "net@qat")[1]
    assert manifest.quantized and manifest.input.shape == (-1, 3, 32, 32)


# -- refusals -----------------------------------------------------------------------------------
REFUSED = {
    "two-inputs": "the program has 2 inputs ['x', 'y']; trtbatch serves models with one image input",
    "int64-input": "input 'x' is int64; trtbatch feeds float32 images",
    "rank-2": "input 'x' has shape [-1, 12] (rank 2); trtbatch feeds image batches [N, C, H, W]",
    "scalar-output": "is a scalar in the program (no batch dimension); trtbatch needs every output shaped [N, ...]",
    "no-batch-output": "has shape [4, 30, 30] for a batch of 1; trtbatch needs the batch as the first dimension",
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_what_cannot_be_served_is_refused(env: dict[str, str], tmp_path: Path, kind: str) -> None:
    assert REFUSED[kind] in refusal(env, "models", "add", str(layouts.refused(tmp_path, kind)), "--name", "refused")
    assert not (Path(env["TRTBATCH_MODEL_REPO"]) / "refused").exists()


def test_folders_without_exactly_one_model(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert f"no model in {tmp_path / 'empty'}: expected" in refusal(env, "models", "add", str(tmp_path / "empty"),
                                                                     "--name", "x")
    both = layouts.link_tree(layouts.jit_saved(tmp_path / "a", prefix="first"), tmp_path / "both")
    layouts.onnx_model(both / "second.onnx", softmax=False)
    message = refusal(env, "models", "add", str(both), "--name", "x")
    assert "holds 2 models (first.pdmodel, second.onnx); point at one file" in message
    ok(env, "models", "add", str(both / "first.pdmodel"), "--name", "first")


def test_a_refusal_is_one_line_from_the_real_entry_point(env: dict[str, str], tmp_path: Path) -> None:
    src = layouts.refused(tmp_path, "two-inputs")
    full: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("TRTBATCH_")}
    full.update(env, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", "from cli import main; main()", "models", "add", str(src),
                          "--name", "two"], env=full, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {REFUSED['two-inputs']}: export the model with only the image as input"]


def test_models_show_marks_the_current_version(env: dict[str, str], redis_server: RedisServer, tmp_path: Path) -> None:
    """Two published versions of one name: `models show` marks the newest, the one new jobs use."""
    import redis

    from common.artifacts import ArtifactStore

    artifacts = ArtifactStore(redis.Redis.from_url(redis_server.url))
    published = []
    for i, softmax in enumerate((False, True)):  # two different programs: two versions
        ok(env, "models", "add", str(layouts.jit_saved(tmp_path / str(i), softmax=softmax)), "--name", "ver",
           *(["--force"] if i else []))
        published.append(artifacts.publish_version("ver", Path(env["TRTBATCH_MODEL_REPO"]) / "ver"))
    lines = [line for line in ok(env, "models", "show", "ver").splitlines() if line.startswith("version")]
    assert lines == [f"version    {published[1]}  (current: new jobs use it)", f"version    {published[0]}"]
