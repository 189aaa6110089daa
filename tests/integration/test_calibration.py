"""Calibration through the queue: PTQ for real on CPU workers, and the TensorRT-table flow around
the one step that needs TensorRT (which cannot run on this machine)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import zlib  # noqa: F401  # before paddle
from pathlib import Path

import pytest

from common import keys, routing
from common.artifacts import ArtifactStore
from common.celery_app import CALIBRATE_TASK
from common.errors import InputError, PrecisionUnsupportedError
from common.schemas import CalibTask, JobRecord
from producer import calibrate as calib_lib
from producer import jobs, submit
from tests.helpers import REPO_ROOT, running_worker, worker_env

pytestmark = pytest.mark.integration


def subset_manifest(labels_csv: Path, out: Path, start: int, count: int) -> Path:
    rows = list(csv.DictReader(labels_csv.open()))[start:start + count]
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"path": str(labels_csv.parent / row["path"]), "label": row["label"]})
    return out


@pytest.fixture(scope="module")
def ptq_job(cpu_worker, digits, settings, tmp_path_factory):
    """One PTQ calibration job on the digits model, with a labelled evaluation set."""
    from producer.client import Client

    client = Client(settings)
    calib = subset_manifest(digits["labels"], tmp_path_factory.mktemp("calib") / "calib.csv", 0, 200)
    opts = calib_lib.CalibrateOptions(model="digits", images=(str(calib),), method="ptq", algo="hist",
                                      eval_paths=(str(digits["labels"]),), batch_size=16, samples=200)
    job_id = calib_lib.calibrate(client, opts)
    final = jobs.wait(client, job_id, timeout_s=300)
    yield client, job_id, final
    client.close()


def test_ptq_job_makes_a_quantized_version_with_provenance_and_report(ptq_job):
    client, _, final = ptq_job
    assert final.state == "done", final.meta.get("error")
    meta = final.meta
    assert meta["result_name"] == "digits@int8-ptq"
    assert meta["kind"] == "calibration" and final.done == 200
    assert meta["warnings"] == []  # 200 images >= the 100 recommended for PTQ
    manifest = client.artifacts.manifest(meta["result_version"])
    assert manifest.quantized and manifest.base == "digits"
    prov = manifest.provenance
    assert prov["algo"] == "hist" and prov["samples"] == 200 and prov["method"] == "ptq"
    assert len(prov["calibration_sha256"]) == 64 and prov["paddle_version"] == "2.6.2" and prov["date"]
    report = json.loads(client.conn.get(keys.report(meta["result_version"])))
    rows = {r["precision"]: r for r in report["precisions"]}
    assert set(rows) >= {"fp32", "int8"}
    assert report["eval_images"] == 540 and report["labelled_images"] == 540
    assert rows["fp32"]["accuracy"] >= 0.97
    assert abs(rows["int8"]["accuracy_drop_pt"]) <= 0.3 + 1e-9
    assert rows["int8"]["top1_agreement"] > 0.97 and rows["int8"]["max_abs_diff"] > 0
    assert all(r["images_per_s"] > 0 for r in rows.values())


def test_models_show_prints_the_report(ptq_job, base_env):
    env = worker_env(base_env)
    out = subprocess.run([sys.executable, "-c", "from cli import main; main()", "models", "show", "digits",
                          "--json"], env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["quantized_version"] == "digits@int8-ptq"
    assert info["quantization_reports"][0]["method"] == "ptq"
    text = subprocess.run([sys.executable, "-c", "from cli import main; main()", "models", "show", "digits"],
                          env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120).stdout
    assert "report" in text and "int8" in text and "top-1 agree" in text


def test_int8_jobs_on_two_workers_with_separate_caches(ptq_job, digits, redis_server, base_env, session_dirs,
                                                       tmp_path):
    """INT8 served for real by oneDNN, by two workers that share nothing but Redis."""
    client, _, _ = ptq_job
    fp32_id = submit.submit(client, submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits"))
    jobs.wait(client, fp32_id, timeout_s=180)
    other_cache = tmp_path / "other-cache"
    env = worker_env(base_env, TRTBATCH_CACHE_DIR=str(other_cache))
    with running_worker(redis_server.client(), env, "itest-cpu2@other", session_dirs["logs"] / "cpu2.log"):
        opts = submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits", precision="int8", batch_size=8)
        int8_id = submit.submit(client, opts)
        final = jobs.wait(client, int8_id, timeout_s=300)
    assert final.state == "done" and final.failed == 0
    records = list(client.store.iter_results(int8_id))
    assert {r.precision for r in records} == {"int8"}
    assert {r.model for r in records} == {"digits@int8-ptq"}
    assert {r.worker for r in records} == {"itest-cpu@local", "itest-cpu2@other"}
    fp32_acc = jobs.accuracy(client, fp32_id)["accuracy"]
    int8_acc = jobs.accuracy(client, int8_id)["accuracy"]
    assert abs(fp32_acc - int8_acc) <= 0.003 + 1e-9, (fp32_acc, int8_acc)
    vid = records[0].version_id
    first = session_dirs["cache"] / "models" / vid
    second = other_cache / "models" / vid
    for name in ("inference.pdmodel", "inference.pdiparams", "model.toml"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def no_job_state(conn) -> list[bytes]:
    """Keys a job would leave: its record, payloads, the jobs index, a queued message."""
    found = [k for k in conn.scan_iter(match=f"{keys.PREFIX}:*") if k.split(b":")[1] in (b"job", b"payload", b"jobs")]
    queues = [k for k in conn.scan_iter(match=keys.broker_queue("*")) if conn.type(k) == b"list" and conn.llen(k)]
    return found + queues


def test_too_few_calibration_images_is_refused_before_a_job_exists(digits, client, tmp_path, redis_server):
    calib = subset_manifest(digits["labels"], tmp_path / "few.csv", 0, 5)
    with pytest.raises(InputError, match="5 decodable image\\(s\\) found in 5 image file\\(s\\); ptq calibration "
                                         "needs at least 16"):
        calib_lib.calibrate(client, calib_lib.CalibrateOptions(model="digits", images=(str(calib),)))
    with pytest.raises(InputError, match="--samples 8 uses only the first 8"):
        calib_lib.calibrate(client, calib_lib.CalibrateOptions(model="digits", images=(str(digits["images"]),),
                                                               samples=8))
    assert no_job_state(redis_server.client()) == []


def bad_image_folder(tmp_path: Path, case: str) -> Path:
    folder = tmp_path / case
    if case == "missing":
        return folder
    folder.mkdir()
    for i in range(20):
        if case == "corrupt-images":  # image names, no image inside
            (folder / f"{i}.png").write_bytes(b"not a png " * i)
        elif case == "text-files":
            (folder / f"notes{i}.txt").write_text("hello")
    return folder


@pytest.mark.parametrize(("case", "expected"), [
    ("empty", "(no images in|0 decodable image)"),
    ("text-files", "(no images in|0 decodable image)"),
    ("corrupt-images", "0 decodable image\\(s\\) found in 20 image file\\(s\\); ptq calibration needs at least 16"),
    ("missing", "no such file or directory: "),
])
def test_calibrate_cli_refuses_unusable_image_folders(case, expected, digits, base_env, redis_server, tmp_path):
    """`trtbatch calibrate --images DIR --wait` on a folder it cannot calibrate from: exit 2 and one line
    naming the folder, before a job exists (it used to record a "done" job and end in a traceback)."""
    folder = bad_image_folder(tmp_path, case)
    out = subprocess.run([sys.executable, "-c", "from cli import main; main()", "calibrate", "--model", "digits",
                          "--images", str(folder), "--wait"], env=worker_env(base_env), capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]) and str(folder) in lines[0], out.stderr
    assert no_job_state(redis_server.client()) == []


def test_worker_fails_a_calibration_job_with_unusable_images(cpu_worker, digits, client, tmp_path, monkeypatch):
    """Jobs that reach a worker without usable images (the producer's check skipped, as an older or
    foreign producer would) fail with the reason - never "done", never a retried traceback."""
    monkeypatch.setattr(calib_lib, "check_images", lambda *_: None)
    corrupt = calib_lib.calibrate(client, calib_lib.CalibrateOptions(
        model="digits", images=(str(bad_image_folder(tmp_path, "corrupt-images")),)))
    vid = client.artifacts.versions("digits")[0]
    empty = "calib-no-images"
    client.store.create_job(JobRecord(job_id=empty, kind="calibration", model="digits", version_id=vid,
                                      queue=routing.calibration_queue("ptq", "paddle")))
    client.store.set_fields(empty, state="queued", submit_complete=True, n_images=0)
    task = CalibTask(job_id=empty, version_id=vid, model="digits", method="ptq", algo="hist", payload_keys=())
    client.app.send_task(CALIBRATE_TASK, args=[task.encode()], queue=routing.calibration_queue("ptq", "paddle"))
    for job_id, expected in ((corrupt, "only 0 usable calibration images (20 unreadable)"),
                             (empty, "carries no calibration images; ptq needs at least 16")):
        final = jobs.wait(client, job_id, timeout_s=120)
        assert final.state == "failed", final.as_dict()
        assert expected in final.meta["error"] and "retries" not in final.meta["error"]
        assert not final.meta.get("result_version")


def test_int8_without_calibration_names_the_command(client, digits, tmp_path):
    from common.repo import ModelRepository

    repo = ModelRepository(digits["repo"])
    repo.install(repo.dir("digits"), repo.load("digits").with_updates(name="digits-copy", description="copy"))
    try:
        with pytest.raises(PrecisionUnsupportedError, match="trtbatch calibrate --model digits-copy"):
            submit.submit(client, submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits-copy",
                                                       precision="int8"))
    finally:
        repo.remove("digits-copy")


def test_trt_calibration_job_on_a_node_without_tensorrt_fails_clearly(cpu_worker, digits, client, tmp_path):
    calib = subset_manifest(digits["labels"], tmp_path / "c.csv", 0, 80)
    job_id = calib_lib.calibrate(client, calib_lib.CalibrateOptions(model="digits", images=(str(calib),),
                                                                    method="trt", samples=80))
    final = jobs.wait(client, job_id, timeout_s=120)
    assert final.state == "failed"
    assert "trt/int8" in final.meta["error"] and "without CUDA" in final.meta["error"]


def test_trt_table_flow_around_the_tensorrt_step(client, digits, tmp_path, monkeypatch):
    """Everything of --method trt except TensorRT itself: the calibration task's own code runs, with
    only `run_trt_calibration` replaced by what Paddle does in that step - writing
    <model dir>/_opt_cache/trt_calib_<key> when the predictor is destroyed. Then a second "machine"
    (another artifact cache) installs the table where Paddle reads it."""
    from common import calibration
    from common.schemas import CalibTask, JobRecord
    from common.spec import NodeInfo, build_spec
    from workers.engines import quantize
    from workers.pipeline import calibration as calibration_task
    from workers.pipeline.context import WorkerIdentity, make_slot_context

    node = NodeInfo(cuda=True, trt_compile_version=(8, 5, 3), trt_runtime=True, gpu_count=1, gpu_name="H100",
                    gpu_compute_capability="9.0", paddle_version="2.6.2")
    ident = WorkerIdentity(name="fake-trt@test", device="gpu", gpu_index=0, cpu_threads=1, slots=1, decode_threads=2,
                           capabilities=frozenset(node.capabilities("gpu")), queues=(), node=node,
                           lock_path=str(tmp_path / "lock"))
    ctx = make_slot_context(client.settings.replace(cache_dir=tmp_path / "gpu-cache"), ident, 0)
    fed: list[int] = []

    def tensorrt_step(spec, model_dir, opt_dir, arrays, batch_size):
        assert spec.trt.use_calib_mode and not spec.trt.use_static and spec.trt.precision_mode == "Int8"
        assert spec.trt.workspace_size == 1 << 30 and spec.trt.min_subgraph_size == 5
        assert (model_dir / "inference.pdmodel").exists()
        fed.append(len(arrays))
        cache = model_dir / "_opt_cache"
        cache.mkdir()
        (cache / "trt_calib_13271834409125512907").write_bytes(b"TRT-8503-EntropyCalibration2\nx: 3c010a14\n")

    monkeypatch.setattr(quantize, "run_trt_calibration", tensorrt_step)
    # a model of its own, so no quantized sibling from other tests can serve its INT8 jobs
    from common.repo import ModelRepository

    repo = ModelRepository(tmp_path / "repo")
    repo.install(digits["repo"] / "digits", ModelRepository(digits["repo"]).load("digits").with_updates(name="dtrt"))
    vid = client.artifacts.publish_version("dtrt", repo.dir("dtrt"))
    job_id = "trt-flow-test"
    client.store.create_job(JobRecord(job_id=job_id, kind="calibration", model="dtrt"))
    calib = subset_manifest(digits["labels"], tmp_path / "c.csv", 0, 70)
    keys_, n = calib_lib._upload(client, job_id, False, (str(calib),), 0, 16)
    task = CalibTask(job_id=job_id, version_id=vid, model="dtrt", method="trt", algo="", payload_keys=tuple(keys_),
                     batch_size=16, samples=500)
    result = calibration_task.run_calibration(ctx, task)
    assert fed == [70] == [n] and result["result_version"] == vid
    assert any("below the recommended 500" in w for w in result["warnings"])
    manifest = client.artifacts.manifest(vid)
    serving = build_spec(manifest, vid, node, "gpu", "trt", "int8", 16, "trt-calib")
    assert calibration.table_files(client.artifacts, vid, serving.calib_key())
    # a worker on another machine: fresh artifact client, its own cache
    other = ArtifactStore(client.conn.__class__(connection_pool=client.conn.connection_pool))
    opt_dir = tmp_path / "other-machine" / "engines" / serving.engine_cache_name()
    written = calibration.install_tables(other, serving, opt_dir)
    assert [p.name for p in written] == ["trt_calib_13271834409125512907"]
    assert written[0].parent == opt_dir and written[0].read_bytes().startswith(b"TRT-8503")
    # a different spec (another batch size) never uses that table
    other_batch = build_spec(manifest, vid, node, "gpu", "trt", "int8", 32, "trt-calib")
    with pytest.raises(PrecisionUnsupportedError, match="tables exist for batch sizes \\[16\\]"):
        calibration.install_tables(other, other_batch, tmp_path / "x")
    # the producer refuses a trt-int8 job whose batch size has no table, naming the fix
    with pytest.raises(PrecisionUnsupportedError, match="--batch-size 16"):
        submit.make_plan(client, submit.SubmitOptions(paths=("x",), model="dtrt", precision="int8", target="trt",
                                                      batch_size=32))
    for target in ("trt", "any"):
        plan = submit.make_plan(client, submit.SubmitOptions(paths=("x",), model="dtrt", precision="int8",
                                                             target=target, batch_size=16))
        assert plan.resolved.int8_source == "trt-calib" and plan.queue == "trtbatch.paddle.trt.int8"
    client.conn.delete(keys.calib_table(vid, serving.calib_key()))
