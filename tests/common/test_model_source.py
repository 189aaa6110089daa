"""Which model a folder or file holds (``common.repo.find_model``), decided from file names alone,
and how ``staged_source`` presents it under our file names. Real models go through the same code in
tests/integration/test_models_add.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ModelError
from common.manifest import MODEL_FILE, ONNX_FILE, PARAMS_FILE
from common.repo import ModelSource, find_model, staged_source


def files(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    return folder


@pytest.mark.parametrize(("names", "model", "params"), [
    (("inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info", "model.toml"),
     "inference.pdmodel", "inference.pdiparams"),
    (("mynet.pdmodel", "mynet.pdiparams"), "mynet.pdmodel", "mynet.pdiparams"),
    (("__model__", "__params__"), "__model__", "__params__"),
    (("model", "params"), "model", "params"),
    (("__model__", "conv2d_0.w_0", "conv2d_0.b_0"), "__model__", None),
])
def test_paddle_layouts(tmp_path: Path, names: tuple[str, ...], model: str, params: str | None) -> None:
    found = find_model(files(tmp_path / "m", *names))
    assert found == ModelSource(tmp_path / "m", "paddle", model, params)
    assert found.ours == (model == MODEL_FILE)


def test_onnx_file_or_folder(tmp_path: Path) -> None:
    folder = files(tmp_path / "m", "resnet.onnx")
    assert find_model(folder) == ModelSource(folder, "onnx", "resnet.onnx")
    assert find_model(folder / "resnet.onnx").fmt == "onnx"
    assert find_model(files(tmp_path / "o", ONNX_FILE)).ours


def test_a_file_picks_one_of_several(tmp_path: Path) -> None:
    folder = files(tmp_path / "m", "a.pdmodel", "a.pdiparams", "__model__", "__params__", "b.onnx")
    with pytest.raises(ModelError) as info:
        find_model(folder)
    message = str(info.value)
    assert "holds 3 models (a.pdmodel, __model__, b.onnx); point at one file" in message
    assert f"trtbatch models add {folder / 'a.pdmodel'}" in message and "\n" not in message
    assert find_model(folder / "a.pdmodel").params_file == "a.pdiparams"
    assert find_model(folder / "a.pdiparams").model_file == "a.pdmodel"
    assert find_model(folder / "__model__").params_file == "__params__"
    assert find_model(folder / "b.onnx").fmt == "onnx"


@pytest.mark.parametrize(("names", "message"), [
    ((), "no model in {d}: expected <name>.pdmodel + <name>.pdiparams, __model__ [+ __params__], model + params, "
         "or an .onnx file"),
    (("net.pdmodel",), "{d}/net.pdmodel has no net.pdiparams beside it"),
    (("net.pdiparams",), "{d} has net.pdiparams but no net.pdmodel program"),
    (("inference.json", "inference.pdiparams"), "{d}/inference.json is a Paddle 3 PIR program, which Paddle 2.6 "
                                                "cannot load"),
    (("readme.txt", "labels.txt"), "no model in {d}"),
])
def test_refusals(tmp_path: Path, names: tuple[str, ...], message: str) -> None:
    folder = files(tmp_path / "m", *names)
    with pytest.raises(ModelError) as info:
        find_model(folder)
    assert message.format(d=folder) in str(info.value)


def test_a_model_one_folder_down_is_named(tmp_path: Path) -> None:
    files(tmp_path / "download" / "ch_rec_infer", "inference.pdmodel", "inference.pdiparams")
    with pytest.raises(ModelError, match=r"no model in .*download itself, but .*ch_rec_infer has one: point at"):
        find_model(tmp_path / "download")


def test_other_files_are_refused(tmp_path: Path) -> None:
    files(tmp_path, "weights.bin")
    with pytest.raises(ModelError, match=r"is not a model file; point at a folder, a \.pdmodel, __model__ or"):
        find_model(tmp_path / "weights.bin")
    with pytest.raises(ModelError, match="does not exist"):
        find_model(tmp_path / "nothing")
    files(tmp_path / "p", "params")
    with pytest.raises(ModelError, match="params has no model program beside it"):
        find_model(tmp_path / "p" / "params")


def test_staged_source_links_other_names_to_ours(tmp_path: Path) -> None:
    ours = files(tmp_path / "ours", MODEL_FILE, PARAMS_FILE)
    with staged_source(ours) as (folder, fmt):
        assert (folder, fmt) == (ours, "paddle")
    legacy = files(tmp_path / "legacy", "__model__", "__params__")
    with staged_source(legacy) as (folder, fmt):
        assert fmt == "paddle" and folder != legacy
        assert (folder / MODEL_FILE).read_bytes() == b"__model__"
        assert (folder / PARAMS_FILE).read_bytes() == b"__params__"
    assert not folder.exists()
    with staged_source(files(tmp_path / "onnx", "net.onnx")) as (folder, fmt):
        assert fmt == "onnx" and (folder / ONNX_FILE).read_bytes() == b"net.onnx"


def test_staged_source_resaves_one_file_per_parameter(tmp_path: Path) -> None:
    separate = files(tmp_path / "sep", "__model__", "fc_0.w_0")
    calls = []

    def resave(src: Path, model_file: str, dest: Path) -> None:
        calls.append((src, model_file))
        files(dest, MODEL_FILE, PARAMS_FILE)

    with staged_source(separate, resave=resave) as (folder, _):
        assert sorted(p.name for p in folder.iterdir()) == [PARAMS_FILE, MODEL_FILE]
    assert calls == [(separate, "__model__")]
    with pytest.raises(ModelError, match="one file per parameter"), staged_source(separate):
        pass
