"""Job queries for the CLI: status (with who can serve it), waiting, and result export."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from common import fleet
from common.errors import InputError, JobError
from common.schemas import ResultRecord
from common.store import JobStatus
from producer.client import Client

EXPORT_FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("index", "path", "ok", "error", "error_code", "label", "top1_label", "top1_score",
               "top_k", "model", "version_id", "precision", "backend", "worker", "device")


def status(client: Client, job_id: str) -> dict[str, Any]:
    st = client.store.status(job_id)
    out = st.as_dict()
    out["served_by"] = None
    if not st.terminal:
        workers = client.live_workers()
        servers = fleet.servers_of(workers, out["queue"])
        out["served_by"] = sorted(w.name for w in servers)
        out["unservable"] = fleet.unservable_reason(workers, out["queue"])
    return out


def wait(client: Client, job_id: str, on_progress: Callable[[JobStatus], None] | None = None,
         poll_s: float = 0.5, timeout_s: float | None = None) -> JobStatus:
    """Poll until the job is done or cancelled (or ``timeout_s`` passes: JobError)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        st = client.store.status(job_id, reasons=0)
        if on_progress:
            on_progress(st)
        if st.terminal:
            return client.store.status(job_id)
        if deadline is not None and time.monotonic() > deadline:
            raise JobError(f"job {job_id} not finished after {timeout_s}s "
                           f"({st.finished}/{st.n_images} images)")
        time.sleep(poll_s)


def csv_row(rec: ResultRecord) -> dict[str, Any]:
    top = rec.top_k[0] if rec.top_k else {}
    return {"index": rec.index, "path": rec.path, "ok": rec.ok, "error": rec.error or "",
            "error_code": rec.error_code or "", "label": rec.label or "",
            "top1_label": top.get("label", ""), "top1_score": top.get("score", ""),
            "top_k": json.dumps(rec.top_k) if rec.top_k else "", "model": rec.model,
            "version_id": rec.version_id, "precision": rec.precision, "backend": rec.backend,
            "worker": rec.worker, "device": rec.device}


def export(client: Client, job_id: str, fmt: str, out: TextIO, failed_only: bool = False) -> int:
    """Write every result record of a job to ``out``; returns how many were written."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    client.store.meta(job_id)  # raises JobError for an unknown job
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    n = 0
    for rec in client.store.iter_results(job_id, failed_only=failed_only):
        if writer:
            writer.writerow(csv_row(rec))
        else:
            out.write(json.dumps(rec.as_row(), ensure_ascii=False) + "\n")
        n += 1
    return n


def accuracy(client: Client, job_id: str) -> dict[str, Any]:
    """Top-1 accuracy over images that carry a label (from a manifest)."""
    labelled = correct = 0
    for rec in client.store.iter_results(job_id):
        if rec.label is None:
            continue
        labelled += 1
        if rec.ok and rec.top_k and rec.top_k[0]["label"] == rec.label:
            correct += 1
    return {"labelled": labelled, "correct": correct,
            "accuracy": round(correct / labelled, 6) if labelled else None}
