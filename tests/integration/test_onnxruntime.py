"""The ONNX Runtime engine through the whole system: conversion jobs on a real worker (Paddle,
paddle2onnx, ONNX Runtime), jobs served by ONNX Runtime's CPU EP through Redis and Celery, INT8 from
a PTQ model's QDQ form and ONNX Runtime's TensorRT calibration table, user ONNX models, and the
refusals (no ONNX form yet, INT8 on the CUDA EP, Paddle asked to run an ONNX model).

Each test copies the digits model under a name of its own, so the ONNX forms and quantized versions
it makes never change what other tests see for ``digits``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import closeout
from common.errors import PrecisionUnsupportedError
from common.repo import ModelRepository
from producer import calibrate as calib_lib
from producer import convert as convert_lib
from producer import jobs, submit
from tests.helpers import REPO_ROOT, worker_env

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "cli"]


def copy_model(digits, name: str) -> str:
    repo = ModelRepository(digits["repo"])
    if not repo.exists(name):
        repo.install(repo.dir("digits"), repo.load("digits").with_updates(name=name))
    return name


def convert(client, model: str, **kw) -> dict:
    job_id = convert_lib.convert(client, convert_lib.ConvertOptions(model=model, **kw))
    final = jobs.wait(client, job_id, timeout_s=300)
    assert final.state == "done", final.job.error
    return final.meta


def run(client, paths, model: str, **kw):
    job_id = submit.submit(client, submit.SubmitOptions(paths=tuple(map(str, paths)), model=model, **kw))
    final = jobs.wait(client, job_id, timeout_s=300)
    return job_id, final, list(client.store.iter_results(job_id))


def cli(base_env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=worker_env(base_env), capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=300)


def test_conversion_job_publishes_checked_onnx_forms(client, cpu_worker, digits, base_env):
    model = copy_model(digits, "dort")
    meta = convert(client, model, check_images=(str(digits["labels"]),))
    forms = {f["variant"]: f for f in meta["conversions"]}
    assert set(forms) == {"fp32", "fp16"} and meta["worker"] == cpu_worker and meta["samples"] == 64
    assert forms["fp32"]["name"] == "dort.onnx" and forms["fp16"]["name"] == "dort.onnx-fp16"
    assert forms["fp32"]["check"]["rel_l2"] < 1e-5 and forms["fp32"]["check"]["top1_agreement"] == 1.0
    assert forms["fp16"]["check"]["rel_l2"] < 1e-2
    for variant, form in forms.items():
        manifest = client.artifacts.manifest(form["version_id"])
        assert manifest.format == "onnx" and manifest.provenance["variant"] == variant
        assert manifest.provenance["source_version"] == meta["version_id"]
        assert manifest.provenance["tools"]["paddle2onnx"] == "1.3.1"
        assert set(client.artifacts.version(form["version_id"])["files"]) == {"model.onnx", "model.toml"}
    again = convert(client, model)  # a version is converted once: the job reuses what exists
    assert {f["version_id"] for f in again["conversions"]} == {f["version_id"] for f in forms.values()}
    assert all(f["reused"] for f in again["conversions"])
    shown = cli(base_env, "models", "show", model)
    assert shown.returncode == 0, shown.stderr
    assert f"serves     onnxruntime  fp32  {forms['fp32']['version_id']} (checked: rel L2" in shown.stdout


def test_jobs_served_by_onnxruntime_match_paddle(client, cpu_worker, digits):
    model = copy_model(digits, "dort")
    convert(client, model)
    files = sorted(digits["images"].glob("digit_0*.png"))[:64]
    _, final, records = run(client, files, model, engine="onnxruntime", include_outputs=True, batch_size=16)
    assert final.state == "done" and final.done == len(files) and final.meta["engine"] == "onnxruntime"
    assert final.meta["queue"] == "trtbatch.onnxruntime.any.fp32"
    assert {(r.engine, r.backend, r.worker) for r in records} == {("onnxruntime", "cpu", cpu_worker)}
    _, paddle_final, paddle_records = run(client, files, model, engine="paddle", include_outputs=True, batch_size=16)
    assert {r.engine for r in paddle_records} == {"paddle"}
    assert paddle_final.meta["queue"].startswith("trtbatch.paddle.")
    got = np.array([next(iter(r.outputs.values())) for r in records])
    ref = np.array([next(iter(r.outputs.values())) for r in paddle_records])
    assert float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) < 1e-5
    assert [r.top_k[0]["label"] for r in records] == [r.top_k[0]["label"] for r in paddle_records]
    # engine any: both engines can serve it now, so the job's queue is open to both
    assert submit.make_plan(client, submit.SubmitOptions(paths=("x",), model=model)).queue == "trtbatch.any.any.fp32"


def test_int8_from_the_ptq_models_qdq_form(client, cpu_worker, digits, tmp_path):
    model = copy_model(digits, "dq8")
    calib = tmp_path / "calib.csv"
    with open(digits["labels"], newline="") as fh, open(calib, "w", newline="") as out:
        rows = list(csv.DictReader(fh))[:64]
        writer = csv.writer(out)
        writer.writerow(["path", "label"])
        writer.writerows([(str(digits["images"] / r["path"]), r["label"]) for r in rows])
    job_id = calib_lib.calibrate(client, calib_lib.CalibrateOptions(model=model, images=(str(calib),), samples=64))
    assert jobs.wait(client, job_id, timeout_s=300).state == "done"
    with pytest.raises(PrecisionUnsupportedError, match=rf"trtbatch convert --model {model}@int8-ptq"):
        submit.make_plan(client, submit.SubmitOptions(paths=("x",), model=model, precision="int8",
                                                      engine="onnxruntime"))
    meta = convert(client, f"{model}@int8-ptq")
    (form,) = meta["conversions"]  # a quantized model has no FP16 form
    assert form["variant"] == "qdq" and form["name"] == f"{model}@int8-ptq.onnx" and form["check"]["rel_l2"] < 0.1
    assert client.artifacts.manifest(form["version_id"]).quantized
    _, final, records = run(client, [digits["labels"]], model, precision="int8", engine="onnxruntime")
    assert final.state == "done" and final.failed == 0
    assert {(r.engine, r.backend, r.precision) for r in records} == {("onnxruntime", "cpu", "int8")}
    assert jobs.accuracy(client, final.job_id)["accuracy"] >= 0.97


def test_refusals_before_any_job_exists(client, cpu_worker, digits):
    model = copy_model(digits, "dnone")
    submit.publish_local(client, model, "fp32")
    with pytest.raises(PrecisionUnsupportedError, match=rf"no ONNX form \(fp32\).*trtbatch convert --model {model}"):
        submit.make_plan(client, submit.SubmitOptions(paths=("x",), model=model, engine="onnxruntime"))
    with pytest.raises(PrecisionUnsupportedError, match="CUDA execution provider has no INT8 convolution kernels"):
        submit.make_plan(client, submit.SubmitOptions(paths=("x",), model=model, precision="int8",
                                                      engine="onnxruntime", target="gpu"))
    # without an ONNX form, an "any" job goes to Paddle only (an ONNX Runtime worker would fail it)
    assert submit.make_plan(client, submit.SubmitOptions(paths=("x",), model=model)).queue == "trtbatch.paddle.any.fp32"


def test_a_users_onnx_model_is_served_by_onnxruntime_only(client, cpu_worker, digits, base_env, tmp_path):
    model = copy_model(digits, "dort")
    meta = convert(client, model, fp16=False)
    exported = tmp_path / "my_model.onnx"
    folder = client.artifacts.materialize(meta["conversions"][0]["version_id"], tmp_path / "cache")
    exported.write_bytes((folder / "model.onnx").read_bytes())
    out = cli(base_env, "models", "add", str(exported), "--name", "user-onnx", "--shape", "1,32,32", "--color", "L",
              "--resize", "32,32", "--crop", "", "--mean", "0.5", "--std", "0.5", "--scale", str(1 / 255),
              "--labels", str(_labels(tmp_path)), "--top-k", "3", "--json")
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout)
    assert added["inputs"] == ["x"] and len(added["outputs"]) == 1
    assert ModelRepository(digits["repo"]).load("user-onnx").format == "onnx"
    files = sorted(digits["images"].glob("digit_00*.png"))[:20]
    _, final, records = run(client, files, "user-onnx")
    assert final.state == "done" and final.failed == 0 and final.meta["queue"] == "trtbatch.onnxruntime.any.fp32"
    assert {r.engine for r in records} == {"onnxruntime"}
    with pytest.raises(PrecisionUnsupportedError, match="only the onnxruntime engine serves it"):
        submit.make_plan(client, submit.SubmitOptions(paths=("x",), model="user-onnx", engine="paddle"))
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    refused = cli(base_env, "models", "add", str(bad), "--name", "broken-onnx", "--shape", "1,32,32")
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr


def _labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(str(i) for i in range(10)) + "\n")
    return path


def test_onnxruntime_tensorrt_calibration_table(client, cpu_worker, digits):
    """Route a for the TensorRT EP: ONNX Runtime's calibrator runs on this CPU worker and publishes the
    table under the ONNX form; a TensorRT INT8 job then resolves to it - and, with no TensorRT worker
    alive, status says what it needs."""
    model = copy_model(digits, "dort")
    convert(client, model)
    job_id = calib_lib.calibrate(client, calib_lib.CalibrateOptions(
        model=model, images=(str(digits["labels"]),), method="trt", engine="onnxruntime", samples=96))
    final = jobs.wait(client, job_id, timeout_s=300)
    assert final.state == "done", final.job.error
    assert final.meta["result_name"] == f"{model}.onnx" and final.done == 96
    plan = submit.make_plan(client, submit.SubmitOptions(paths=("x",), model=model, precision="int8",
                                                         engine="onnxruntime", target="trt"))
    assert plan.resolved.int8_source == "trt-calib" and plan.queue == "trtbatch.onnxruntime.trt.int8"
    files = sorted(digits["images"].glob("digit_000*.png"))[:2]
    job = submit.submit(client, submit.SubmitOptions(paths=tuple(map(str, files)), model=model, precision="int8",
                                                     engine="onnxruntime", target="trt"))
    status = jobs.status(client, job)
    assert "needs a GPU worker with onnxruntime-gpu and TensorRT 10" in status["unservable"]
    closeout.cancel(client.store, job)
