"""Retry a job's failed and cancelled images as a new job (``trtbatch retry JOB``).

The new job is submitted with the original's submit options (``JobRecord.options``: model, precision,
backend, engine, batch size, top-k, raw outputs) on a JSONL manifest of the images to retry - absolute
paths, with their labels when the original came from a labelled manifest. The manifest is written to
``<state_dir>/retries/<new job>.jsonl`` and kept (``submit --resume`` of the new job reads it again);
manifests older than the result TTL are removed, as their jobs are gone. The new job's options name
the job it retries (``retry_of``).

Result records hold display paths (producer/inputs.py ``display_path``): a file name that was not
valid UTF-8 is written with U+FFFD in place of its bad bytes. Such a path is matched back to the real
name in its folder (``real_path``). A relative path is relative to where the original job was
submitted (the ``cwd`` of its submit options), wherever ``retry`` runs. An image that is not found is retried all the
same and fails in the new job with the usual reason (``file not found``); the plan counts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO

from common import keys
from common.errors import JobCancelledError, JobError
from common.schemas import JobRecord, ResultRecord
from producer import submit as submit_lib
from producer.client import Client
from producer.inputs import display_path

RETRY_DIR = "retries"
REPLACEMENT = "\ufffd"
MAX_EXAMPLES = 3
_OPTION_NAMES = frozenset(f.name for f in fields(submit_lib.SubmitOptions))


@dataclass
class RetryPlan:
    """What ``prepare`` found to retry, and the new job that will retry it."""

    source: JobRecord
    job_id: str = ""
    manifest: Path | None = None
    failed: int = 0
    cancelled: int = 0
    no_path: int = 0  # records with no path (their payload expired before the job ended): not retried
    missing: list[str] = field(default_factory=list)  # a few paths not found from here
    n_missing: int = 0

    @property
    def images(self) -> int:
        return self.failed + self.cancelled

    def options(self) -> submit_lib.SubmitOptions:
        """The original submit options, on the retry manifest (keys of a newer writer left out)."""
        given = {k: v for k, v in (self.source.options or {}).items() if k in _OPTION_NAMES}
        return submit_lib.SubmitOptions(**{**given, "paths": (str(self.manifest),), "cwd": "",
                                           "retry_of": self.source.job_id})


def real_path(display: str) -> str | None:
    """The file a display path names: the path itself when it exists; for a path with U+FFFD (a name
    that was not UTF-8), the one entry of each such folder whose display form is the component. None when
    nothing (or more than one name) matches."""
    if os.path.lexists(display):
        return display
    if REPLACEMENT not in display:
        return None
    real: list[str] = []
    for part in display.split("/"):
        if REPLACEMENT in part:
            folder = "/".join(real) if real != [""] else "/"
            match = _match(folder or ".", part)
            if match is None:
                return None
            part = match
        real.append(part)
    path = "/".join(real)
    return path if os.path.lexists(path) else None


def _match(folder: str, shown: str) -> str | None:
    try:
        names = os.listdir(os.fsencode(folder))
    except OSError:
        return None
    found = [os.fsdecode(n) for n in names if display_path(os.fsdecode(n)) == shown]
    return found[0] if len(found) == 1 else None


def _manifest_path(client: Client, job_id: str) -> Path:
    folder = Path(client.settings.state_dir) / RETRY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - client.settings.result_ttl_s
    for old in folder.glob("*.jsonl"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:  # its job has expired: nothing can resume it
                old.unlink()
    return folder / f"{job_id}.jsonl"


def _add(plan: RetryPlan, rec: ResultRecord, out: IO[str]) -> None:
    """Write one record's image to the manifest and count it."""
    if not rec.path:
        plan.no_path += 1
        return
    base = (plan.source.options or {}).get("cwd") or ""
    path = rec.path if os.path.isabs(rec.path) or not base else os.path.join(base, rec.path)
    found = real_path(path)
    if found is None:
        plan.n_missing += 1
        if len(plan.missing) < MAX_EXAMPLES:
            plan.missing.append(rec.path)
    row: dict[str, str] = {"path": os.path.abspath(found or path)}
    if rec.label is not None:
        row["label"] = rec.label
    out.write(json.dumps(row) + "\n")  # ASCII: a surrogate-escaped name survives as \udcXX
    if rec.error_code == JobCancelledError.code:
        plan.cancelled += 1
    else:
        plan.failed += 1


def prepare(client: Client, job_id: str) -> RetryPlan:
    """Find a finished job's failed and cancelled images and write the new job's manifest (none is
    written when there is nothing to retry: ``images == 0``)."""
    source = client.store.record(job_id)  # JobError for an unknown job
    if source.kind != "inference":
        raise JobError(f"job {job_id} is a {source.kind} job; only inference jobs can be retried")
    if not source.options:
        raise JobError(f"job {job_id} was not sent by `trtbatch submit` (it records no submit options), so it "
                       "cannot be retried; submit its images again")
    if not source.terminal:
        raise JobError(f"job {job_id} is still {source.state}: wait for it (`trtbatch submit --resume {job_id} "
                       f"--wait`) or cancel it (`trtbatch cancel {job_id}`), then retry")
    out = RetryPlan(source=source, job_id=submit_lib.new_job_id())
    out.manifest = _manifest_path(client, out.job_id)
    with open(out.manifest, "w", encoding="ascii") as fh:
        for rec in client.store.iter_results(job_id, failed_only=True):
            _add(out, rec, fh)
    if not out.images:
        out.manifest.unlink()
        out.manifest = None
    return out


def _exists(client: Client, job_id: str) -> bool:
    try:
        return bool(client.conn.exists(keys.job(job_id)))
    except Exception:  # Redis is gone: keep the manifest, a resume may need it
        return True


def send(client: Client, plan: RetryPlan, on_warning: Callable[[str], None] | None = None) -> str:
    """Submit the planned retry; returns the new job id. A submission refused before the job exists
    (the model was removed, ...) removes the manifest; one cut short keeps it for ``submit --resume``."""
    opts = plan.options()
    try:
        job_id = submit_lib.submit(client, opts, job_id=plan.job_id, on_warning=on_warning)
    except BaseException:
        if plan.manifest and not _exists(client, plan.job_id):
            plan.manifest.unlink(missing_ok=True)
        raise
    return job_id
