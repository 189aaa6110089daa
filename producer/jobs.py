"""Job queries for the CLI: status (with who can serve it), waiting, accuracy.

Result export lives in producer/export.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from common import closeout, fleet, keys
from common.errors import WaitTimeoutError
from common.schemas import TERMINAL_STATES
from common.store import JobStatus
from producer.client import Client

SERVABLE_CHECK_S = 2.0


def status(client: Client, job_id: str) -> dict[str, Any]:
    """A job's record and counts, who serves it (``serving``: live workers able to) and who served it
    (``served_images``: workers by images written), and - for a labelled job - its accuracy. Applies the
    unservable rule on the way (common/closeout.py), so looking at a stuck job is what ends it."""
    record = client.store.record(job_id)
    workers: list[fleet.WorkerInfo] = []
    if record.terminal:
        closeout.finish_pending(client.store, record)  # a close-out cut short (e.g. by Ctrl-C) ends now
    else:
        workers = client.live_workers()
        closeout.check_servable(client.store, workers, record, client.settings.unservable_grace_s)
    st = client.store.status(job_id)
    out = st.as_dict()
    out["serving"] = None  # live workers able to serve it (a job still running)
    out["unservable"] = None
    if not st.terminal:
        out["serving"] = sorted(w.name for w in fleet.servers_of(workers, out["queue"]))
        out["unservable"] = fleet.unservable_reason(workers, out["queue"])
    out["accuracy"] = accuracy(client, job_id) if st.job.kind == "inference" else None
    out["served_images"] = served_images(client, job_id)
    return out


def served_images(client: Client, job_id: str) -> dict[str, int]:
    """The workers that wrote the job's records (ok or failed; not close-out's cancelled or unservable
    ones), busiest first: name -> images."""
    tally = {k.decode(): int(v) for k, v in client.conn.hgetall(keys.job_workers(job_id)).items()}
    return dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))


def wait(client: Client, job_id: str, on_progress: Callable[[JobStatus], None] | None = None,
         poll_s: float = 0.5, timeout_s: float | None = None) -> JobStatus:
    """Poll until the job ends (``timeout_s``: WaitTimeoutError when it passes). Without a timeout an
    inference job still ends: one that no live worker serves fails after ``unservable_grace_s``
    (checked as it polls). Calibration and conversion jobs wait for a worker of their kind: give
    ``timeout_s`` where none may come."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    checked = time.monotonic()
    while True:
        st = client.store.status(job_id, reasons=0)
        if on_progress:
            on_progress(st)
        if st.terminal:
            closeout.finish_pending(client.store, st.job)  # every sent image has its record before we return
            return client.store.status(job_id)
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeoutError(f"job {job_id} is still {st.state} after {timeout_s:g}s "
                                   f"({st.finished}/{st.n_images} images) and keeps running: "
                                   f"`trtbatch status {job_id}`, `trtbatch submit --resume {job_id} --wait` "
                                   f"to wait again, `trtbatch cancel {job_id}` to stop it")
        if time.monotonic() - checked >= SERVABLE_CHECK_S:
            checked = time.monotonic()
            closeout.check_servable(client.store, client.live_workers(), st.job, client.settings.unservable_grace_s)
        time.sleep(poll_s)


def accuracy(client: Client, job_id: str) -> dict[str, Any] | None:
    """Top-1 accuracy of a labelled job (a manifest with a ``label`` column), overall and per class;
    None when no image had a label. Failed images count as wrong; cancelled ones are not judged.
    Read from counters the result writes keep (keys.job_accuracy), so it costs one read at any size."""
    raw = client.conn.hgetall(keys.job_accuracy(job_id))
    if not raw:
        return None
    counts: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        kind, _, label = field.decode().partition(":")
        counts.setdefault(label, {"n": 0, "c": 0, "f": 0})[kind] = int(value)
    per_class = {label: {"labelled": c["n"], "correct": c["c"], "failed": c["f"],
                         "accuracy": round(c["c"] / c["n"], 6) if c["n"] else None}
                 for label, c in sorted(counts.items(), key=lambda kv: _label_order(kv[0]))}
    labelled = sum(c["n"] for c in counts.values())
    correct = sum(c["c"] for c in counts.values())
    return {"labelled": labelled, "correct": correct, "failed": sum(c["f"] for c in counts.values()),
            "accuracy": round(correct / labelled, 6) if labelled else None, "per_class": per_class}


def _label_order(label: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order ("2" before "10"), then the others by name."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def purge(client: Client, cutoff_s: float, dry_run: bool = False) -> dict[str, Any]:
    """Delete ended jobs that finished before ``cutoff_s`` (unix s) and drop index entries of jobs whose
    records expired; active jobs are never touched."""
    ids = [i.decode() for i in client.conn.zrange(keys.JOBS, 0, -1)]
    report: dict[str, Any] = {"deleted": [], "expired": 0, "kept_active": 0}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        pipe = client.conn.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hmget(keys.job(job_id), "state", "finished_s", "created_s")
        for job_id, fields in zip(chunk, pipe.execute(), strict=True):
            _purge_one(client, job_id, fields, cutoff_s, dry_run, report)
    return report


def _purge_one(client: Client, job_id: str, fields: list[bytes | None], cutoff_s: float, dry_run: bool,
               report: dict[str, Any]) -> None:
    state, finished, created = fields
    if state is None:  # the record expired; only its index entry is left
        report["expired"] += 1
        if not dry_run:
            client.conn.zrem(keys.JOBS, job_id)
    elif state.decode() not in TERMINAL_STATES:
        report["kept_active"] += 1
    elif float(finished or created or 0) < cutoff_s:
        report["deleted"].append(job_id)
        if not dry_run:
            client.store.delete(job_id)
