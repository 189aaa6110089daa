"""Job queries for the CLI: status (with who can serve it), waiting, accuracy.

Result export lives in producer/export.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from common import fleet
from common.errors import JobError
from common.store import JobStatus
from producer.client import Client


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
