"""The quantization report: its arithmetic on known arrays, and a real PTQ calibration job run in
this process against real Redis and real Paddle predictors (FP32 vs the INT8 version it made)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common import keys
from common.schemas import BatchPayload, CalibTask, JobRecord, PayloadItem
from workers.pipeline import qreport
from workers.pipeline.calibration import run_calibration
from workers.pipeline.context import SlotContext


def test_compare_and_accuracy() -> None:
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [0.0, 2.0, 1.0]])
    other = ref.copy()
    other[3] = [3.0, 2.0, 1.0]  # image 3 flips from class 1 to class 0
    got = qreport.compare(ref, other)
    assert got["top1_agreement"] == 0.75 and got["max_abs_diff"] == 3.0
    assert got["mean_abs_diff"] == pytest.approx(3 / 12)
    labels = qreport.label_indices(["0", "1", None, "b"], ("a", "b", "c"))
    assert labels.tolist() == [0, 1, -1, 1]  # digits by number, names by the label list, None unknown
    assert qreport.accuracy(ref, labels) == 1.0 and qreport.accuracy(other, labels) == pytest.approx(2 / 3)
    assert qreport.label_indices([None, None], ("a",)) is None and qreport.accuracy(ref, None) is None


def test_report_flags_a_drop_over_the_threshold() -> None:
    ref = np.eye(4)
    worse = np.eye(4)[[0, 1, 2, 0]]
    labels = np.arange(4)
    report = qreport.build_report({"fp32": (ref, 100.0), "int8": (worse, 300.0)}, labels, threshold_pt=1.0)
    rows = {r["precision"]: r for r in report["precisions"]}
    assert rows["int8"]["accuracy_drop_pt"] == 25.0 and rows["int8"]["images_per_s"] == 300.0
    assert len(report["flags"]) == 1 and report["flags"][0].startswith("int8: accuracy drop 25.00 pt exceeds 1.00")
    unlabelled = qreport.build_report({"fp32": (ref, 1.0), "int8": (worse, 1.0)}, None, threshold_pt=1.0)
    assert "top-1 agreement 75.00% with FP32 (no labels)" in unlabelled["flags"][0]
    assert qreport.build_report({"fp32": (ref, 1.0), "int8": (ref, 1.0)}, labels, 1.0)["flags"] == []


def upload(slot: SlotContext, job_id: str, files: list[Path], labels: list[str], evaluation: bool) -> list[str]:
    out = []
    for n, start in enumerate(range(0, len(files), 16)):
        items = tuple(PayloadItem(index=start + i, path=str(f), data=f.read_bytes(), label=labels[start + i])
                      for i, f in enumerate(files[start:start + 16]))
        key = keys.eval_payload(job_id, n) if evaluation else keys.payload(job_id, n)
        slot.conn.set(key, BatchPayload(items).encode(), ex=600)
        out.append(key)
    return out


def test_ptq_job_publishes_an_int8_version_and_its_report(slot: SlotContext, digits_version: str, digits) -> None:
    import csv

    with open(digits["labels"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    files = [digits["images"] / r["path"] for r in rows]
    labels = [r["label"] for r in rows]
    job_id = "calib1"
    slot.store.create_job(JobRecord(job_id=job_id, kind="calibration", model="digits", version_id=digits_version))
    task = CalibTask(job_id=job_id, version_id=digits_version, model="digits", method="ptq", algo="hist",
                     payload_keys=tuple(upload(slot, job_id, files[:48], labels, False)),
                     eval_payload_keys=tuple(upload(slot, job_id, files[48:208], labels[48:], True)),
                     batch_size=16, samples=48)
    result = run_calibration(slot, task)
    assert result["result_name"] == "digits@int8-ptq" and result["samples"] == 48
    assert any("below the recommended 100" in w for w in result["warnings"])
    qmanifest = slot.artifacts.manifest(result["result_version"])
    assert qmanifest.quantized and qmanifest.provenance["source_version"] == digits_version
    stored = json.loads(slot.conn.get(keys.report(result["result_version"])))
    assert stored == json.loads(json.dumps(result["report"]))
    rows_by = {r["precision"]: r for r in stored["precisions"]}
    assert set(rows_by) == {"fp32", "int8"} | ({"bf16"} if ("cpu", "bf16") in slot.identity.capabilities else set())
    assert stored["eval_images"] == 160 and stored["labelled_images"] == 160
    assert rows_by["fp32"]["accuracy"] >= 0.95 and rows_by["fp32"]["top1_agreement"] == 1.0
    assert rows_by["int8"]["top1_agreement"] >= 0.95 and rows_by["int8"]["max_abs_diff"] > 0  # really INT8
    assert all(r["backend"] == "cpu" and r["images_per_s"] > 0 for r in stored["precisions"])
    job = slot.store.record(job_id)
    assert job.state == "running" and job.done == 48 and job.worker == "unit@test"
