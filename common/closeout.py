"""Ending a job early: cancelled by a user, or failed because no live worker can serve it.

Either way every image the job sent and nobody has served yet gets a record at once - cancelled
images with code ``cancelled`` (counted apart from failures), the others with the error's code - so
the job is finished the moment it ends: ``--wait`` returns, ``status`` adds up, ``retry`` finds the
images, and nothing waits for a worker that will never come. Records are written by the store's
idempotent batch write, so a worker that serves one of these batches meanwhile wins for the images
it wrote first and a late delivery finds the batch written. The same rule, "no live worker serves
the queue for ``unservable_grace_s``", is applied by every status query, every ``--wait`` and every
worker's sweep (``check_servable``), whichever comes first.
"""

from __future__ import annotations

import json
import time

from common import fleet, keys
from common.errors import DecodeError, JobCancelledError, TrtbatchError, UnservableError
from common.schemas import BatchPayload, JobRecord, PayloadItem, ResultRecord
from common.store import JobStore

BATCHES_PER_ROUND_TRIP = 8
#: batches a worker's sweep closes out per job and tick (8 round trips: well under a second)
SWEEP_BATCHES = 64

# KEYS: job ; ARGV: state, now, error. Ends an active job; returns 1 if this call ended it.
_END_LUA = """
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'submitting' and st ~= 'queued' and st ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_s', ARGV[2], 'updated_s', ARGV[2])
if ARGV[1] == 'cancelled' then redis.call('HSET', KEYS[1], 'cancelled_s', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
return 1
"""


def cancel(store: JobStore, job_id: str) -> str:
    """Cancel a job and give its unserved images a ``cancelled`` record; returns the job's state."""
    job = store.record(job_id)
    if job.kind == "inference":
        end(store, job_id, "cancelled", JobCancelledError("job cancelled"))
    elif not job.terminal:
        store.conn.eval(_END_LUA, 1, keys.job(job_id), "cancelled", time.time(), "")
    return store.record(job_id).state


def end(store: JobStore, job_id: str, state: str, error: TrtbatchError, max_batches: int | None = None) -> int:
    """End an active job as ``state`` and close out what it sent; returns the records written. Safe to
    repeat: a job already ended only gets the close-out (for batches sent since, e.g. by a producer
    that had a round trip in flight). The state flips first, so workers and the producer stop at
    once; a close-out cut short (Ctrl-C, ``max_batches``) is finished by ``finish_pending``."""
    reason = "" if isinstance(error, JobCancelledError) else str(error)
    store.conn.eval(_END_LUA, 1, keys.job(job_id), state, time.time(), reason)
    return close_out(store, job_id, error, max_batches)


def finish_pending(store: JobStore, job: JobRecord, max_batches: int | None = None) -> int:
    """Finish the close-out of a job that ``end`` ended (cancelled, or failed as unservable) while
    images it sent still have no record; returns the records written (0 for any other job)."""
    if not _unrecorded(job):
        return 0
    error = JobCancelledError("job cancelled") if job.state == "cancelled" else \
        UnservableError(job.error or "the job was ended before its images were served")
    return close_out(store, job.job_id, error, max_batches)


def close_out(store: JobStore, job_id: str, error: TrtbatchError, max_batches: int | None = None) -> int:
    """Write ``error``'s record for every sent image that has none (in the first ``max_batches``
    unwritten batches, if given); returns how many were written."""
    job = store.record(job_id)
    n_batches, n_images = _sent(store, job)
    written = {int(b) for b in store.conn.hkeys(keys.job_batches(job_id))}
    todo = [b for b in range(n_batches) if b not in written][:max_batches]
    state = f"failed:{error.code}"
    total = 0
    for start in range(0, len(todo), BATCHES_PER_ROUND_TRIP):
        chunk = todo[start:start + BATCHES_PER_ROUND_TRIP]
        raws = store.conn.mget([keys.payload(job_id, b) for b in chunk])
        pipe = store.conn.pipeline(transaction=False)
        for batch_no, raw in zip(chunk, raws, strict=True):
            items = _items(raw, job, batch_no, n_images)
            records = [_record(job, batch_no, item, error) for item in items]
            store.queue_write_batch(pipe, job_id, batch_no, records, keys.payload(job_id, batch_no), state)
        total += sum(sum(store.written(reply, job_id)) for reply in pipe.execute())
    return total


def _sent(store: JobStore, job: JobRecord) -> tuple[int, int]:
    """(batches, images) the producer has sent: all of them, or up to its resume cursor."""
    if job.submit_complete:
        return job.n_batches, job.n_images
    raw = store.conn.get(keys.job_progress(job.job_id))
    cursor = json.loads(raw) if raw else {}
    return int(cursor.get("batches", 0)), int(cursor.get("images", 0))


def _items(raw: bytes | None, job: JobRecord, batch_no: int, n_images: int) -> list[PayloadItem]:
    """The batch's items from its payload (paths and labels), or placeholders when it is gone."""
    if raw:
        try:
            return list(BatchPayload.decode(raw).items)
        except DecodeError:
            pass
    start = batch_no * job.batch_size
    return [PayloadItem(index=i, path="") for i in range(start, min(start + job.batch_size, n_images))]


def _record(job: JobRecord, batch_no: int, item: PayloadItem, error: TrtbatchError) -> ResultRecord:
    return ResultRecord(index=item.index, path=item.path, ok=False, error=str(error), error_code=error.code,
                        label=item.label, job_id=job.job_id, batch_no=batch_no, model=job.model,
                        version_id=job.version_id, precision=job.precision, engine=job.engine)


# KEYS: job ; ARGV: now ("" = Redis's clock). Notes when a job was first found unservable and
# returns how long ago that was. Redis's clock, not the caller's: producers and workers on hosts
# whose clocks differ by minutes would otherwise shorten or stretch the grace. A job hash that has
# expired is not recreated.
_NOTE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return '0' end
local now = tonumber(ARGV[1])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local since = tonumber(redis.call('HGET', KEYS[1], 'unservable_since'))
if not since then redis.call('HSET', KEYS[1], 'unservable_since', tostring(now)); return '0' end
return tostring(now - since)
"""
_CLEAR_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HDEL', KEYS[1], 'unservable_since') end
"""


def check_servable(store: JobStore, workers: list[fleet.WorkerInfo], job: JobRecord, grace_s: float,
                   now: float | None = None, max_batches: int | None = None) -> str | None:
    """Apply the unservable rule to one job; returns why no live worker serves it now (None if one does).

    The first check that finds nobody notes the time in the job; one that finds nobody ``grace_s``
    later fails the job's images with the reason; one that finds a server clears the note.
    """
    if job.terminal:
        finish_pending(store, job, max_batches)
        return None
    if job.kind != "inference":
        return None
    reason = fleet.unservable_reason(workers, job.queue)
    if reason is None:
        if job.unservable_since is not None:
            store.conn.eval(_CLEAR_LUA, 1, keys.job(job.job_id))
        return None
    waited = float(store.conn.eval(_NOTE_LUA, 1, keys.job(job.job_id), "" if now is None else now) or 0)
    if waited >= grace_s and job.unservable_since is not None:
        end(store, job.job_id, "failed", UnservableError(
            f"{reason} (nobody served it for {waited:.0f} s; unservable_grace_s = {grace_s:g})"), max_batches)
    return reason


def _unrecorded(job: JobRecord) -> bool:
    """An inference job that was ended (cancelled, or failed as unservable) with sent images still
    without a record."""
    return job.kind == "inference" and job.state in ("cancelled", "failed") and \
        job.done + job.failed + job.cancelled < job.sent_images


_SWEEP_FIELDS = ("state", "kind", "done", "failed", "cancelled", "n_images", "n_enqueued", "submit_complete")


def _sweepable(job_id: str, row: list[bytes | None]) -> bool:
    """An active inference job, or one ended with images still unrecorded (from an HMGET of
    ``_SWEEP_FIELDS``; a job hash that expired has no state)."""
    if row[0] is None:
        return False
    fields = {f: v for f, v in zip(_SWEEP_FIELDS, row, strict=True) if v is not None}
    job = JobRecord.decode({"job_id": job_id, **fields})
    return job.kind == "inference" and (not job.terminal or _unrecorded(job))


def sweep_unservable(store: JobStore, workers: list[fleet.WorkerInfo], grace_s: float, recent: int = 1000,
                     now: float | None = None, max_batches: int | None = SWEEP_BATCHES) -> list[str]:
    """Apply the unservable rule to the ``recent`` newest active inference jobs, and go on with ended
    jobs' unfinished close-outs (a worker's periodic sweep: jobs end even when nobody looks at them).
    At most ``max_batches`` batches are closed out per job and call, so the sweep, which runs in a
    worker's consumer loop (leases, message intake), stays short; the next sweep goes on. Returns
    the ids of jobs nobody serves now."""
    ids = [i.decode() for i in store.conn.zrevrange(keys.JOBS, 0, recent - 1)]
    pipe = store.conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), *_SWEEP_FIELDS)
    candidates = [job_id for job_id, row in zip(ids, pipe.execute(), strict=True) if _sweepable(job_id, row)]
    stuck = []
    for job_id in candidates:
        if check_servable(store, workers, store.record(job_id), grace_s, now, max_batches):
            stuck.append(job_id)
    return stuck
