"""End to end through a real redis-server, a real Celery worker subprocess and real Paddle."""

from __future__ import annotations

import csv
import io
import json
import zlib  # noqa: F401  # before paddle
from pathlib import Path

import numpy as np
import pytest

from common import closeout
from common.artifacts import ArtifactStore
from common.imaging import Preprocessor
from common.manifest import ModelManifest
from producer import export, jobs, submit
from tests.helpers import image_bytes, write

pytestmark = pytest.mark.integration


def run_job(client, paths, timeout_s: float = 180, **kw):
    opts = submit.SubmitOptions(paths=tuple(str(p) for p in paths), **{"model": "digits", **kw})
    job_id = submit.submit(client, opts)
    final = jobs.wait(client, job_id, timeout_s=timeout_s)
    return job_id, final, list(client.store.iter_results(job_id))


def test_digits_accuracy_end_to_end(client, cpu_worker, digits):
    job_id, final, records = run_job(client, [digits["labels"]])
    assert final.state == "done"
    assert final.done == 540 and final.failed == 0
    assert [r.index for r in records] == list(range(540))
    acc = jobs.accuracy(client, job_id)
    assert acc["labelled"] == 540 and acc["failed"] == 0
    assert acc["accuracy"] >= 0.97
    truth: dict[str, list[int]] = {}
    for r in records:  # the counters the result writes keep agree with the records themselves
        truth.setdefault(r.label, []).append(int(r.top_k[0]["label"] == r.label))
    assert {k: (v["labelled"], v["correct"]) for k, v in acc["per_class"].items()} == \
        {k: (len(v), sum(v)) for k, v in truth.items()}
    assert list(acc["per_class"]) == [str(i) for i in range(10)]
    st = jobs.status(client, job_id)
    assert st["accuracy"] == acc
    assert st["served_images"] == {cpu_worker: 540} and st["serving"] is None  # a finished job: who served it
    rec = records[0]
    assert rec.ok and rec.error is None
    assert rec.worker == cpu_worker and rec.device == "cpu" and rec.precision == "fp32" and rec.backend == "cpu"
    assert [t["score"] for t in rec.top_k] == sorted((t["score"] for t in rec.top_k), reverse=True)
    assert set(rec.top_k[0]) == {"label", "index", "score"}
    assert rec.top_k[0]["label"] == str(rec.top_k[0]["index"])


def test_outputs_equal_a_direct_predictor(client, cpu_worker, digits):
    """The worker's raw outputs equal a plain paddle.inference predictor run on the same arrays."""
    from workers.engines.selftest import reference_outputs

    files = sorted(digits["images"].glob("digit_00[0-3]*.png"))[:40]
    _, final, records = run_job(client, files, include_outputs=True, batch_size=16)
    assert final.done == len(files)
    manifest = ModelManifest.load(digits["repo"] / "digits")
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, max_pixels=10**8)
    batch = np.stack([pre(f.read_bytes()).array for f in files])
    expected = reference_outputs(digits["repo"] / "digits", batch)
    got = np.array([next(iter(r.outputs.values())) for r in records], dtype=np.float32)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-5


def test_bad_inputs_fail_alone(client, cpu_worker, digits, workdir: Path):
    good = sorted(digits["images"].glob("digit_000*.png"))[:4]
    jpeg = image_bytes("RGB", (64, 48), "JPEG")
    bad = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": image_bytes("RGB", (64, 48))[:200],
        "empty.png": b"",
        "text.png": b"this is not an image at all\n",
    }
    converted = {
        "cmyk.jpg": image_bytes("CMYK", (40, 40), "JPEG"),
        "rgba.png": image_bytes("RGBA", (40, 40)),
        "gray16.png": image_bytes("I;16", (40, 40)),
        "palette.png": image_bytes("P", (40, 40)),
    }
    paths = list(good)
    for name, data in {**bad, **converted}.items():
        paths.append(write(workdir / name, data))
    paths.append(workdir / "missing.png")
    (workdir / "missing.png").symlink_to(workdir / "nowhere.png")
    _, final, records = run_job(client, paths)
    by_name = {Path(r.path).name: r for r in records}
    assert final.state == "done" and len(records) == len(paths)
    for name in bad:
        rec = by_name[name]
        assert not rec.ok and rec.error and rec.error_code == "bad_image", (name, rec)
    assert "empty" in by_name["empty.png"].error
    assert "not an image" in by_name["text.png"].error
    assert "truncated" in by_name["truncated.jpg"].error
    assert by_name["missing.png"].error == "broken symbolic link"
    for name in [p.name for p in good] + list(converted):
        assert by_name[name].ok, by_name[name]
    assert any("CMYK" in n for n in by_name["cmyk.jpg"].notes)
    assert final.failed == len(bad) + 1


def test_tensorrt_int8_on_a_node_without_tensorrt_fails_clearly(client, cpu_worker, digits, workdir):
    """A TensorRT INT8 batch reaching a CPU-only node fails at once, permanently, with the reason."""
    from common.calibration import publish_tables
    from common.spec import NodeInfo, build_spec

    artifacts = ArtifactStore(client.conn)
    vid = artifacts.publish_version("digits", digits["repo"] / "digits")
    manifest = artifacts.manifest(vid)
    trt_node = NodeInfo(cuda=True, trt_compile_version=(8, 5, 3), paddle_version="2.6.2", trt_runtime=True,
                        gpu_count=1)
    spec = build_spec(manifest, vid, trt_node, "gpu", "trt", "int8", 16, "trt-calib")
    table = workdir / "trt_calib_x"
    table.write_bytes(b"TRT-8503-EntropyCalibration2\n")
    key = publish_tables(artifacts, spec, {"trt_calib_x": table}, {"batch_size": 16})
    try:
        files = sorted(digits["images"].glob("digit_000*.png"))[:3]
        _, final, records = run_job(client, files, precision="int8", target="trt")
    finally:
        client.conn.delete(key)
    assert final.state == "failed" and final.failed == 3  # no image succeeded
    for rec in records:
        assert rec.error_code == "precision_unsupported"
        assert "trt/int8" in rec.error and "without CUDA" in rec.error
    assert final.meta.get("batches_dead", 0) == 0  # permanent: failed at once, not retried


def test_status_says_when_no_live_worker_can_serve(client, cpu_worker, digits):
    files = sorted(digits["images"].glob("digit_000*.png"))[:2]
    opts = submit.SubmitOptions(paths=tuple(map(str, files)), model="digits", precision="fp16")
    job_id = submit.submit(client, opts)
    st = jobs.status(client, job_id)
    assert st["queue"] == "trtbatch.paddle.any.fp16"  # digits has no ONNX form: only Paddle-TRT can serve it
    assert st["serving"] == [] and st["served_images"] == {}
    assert "no live worker can serve queue trtbatch.paddle.any.fp16" in st["unservable"]
    closeout.cancel(client.store, job_id)


def test_csv_export_and_cancel(client, cpu_worker, digits):
    job_id, final, _ = run_job(client, sorted(digits["images"].glob("digit_001*.png")))
    out = io.StringIO()
    n = export.export(client, job_id, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert n == len(rows) == final.done
    assert rows[0]["ok"] == "True" and rows[0]["top1_label"] and json.loads(rows[0]["top_k"])
    assert closeout.cancel(client.store, job_id) == "done"  # a finished job stays finished
