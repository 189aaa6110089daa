"""The result store: job metadata, counters, per-image results and errors, in Redis.

Writes are idempotent: a batch delivered twice (a worker lost mid-batch, a lease that lapsed)
leaves exactly one record per image, because records are written with HSETNX and the counters
only count fields that were new - all inside one Lua script, so a crash can never leave a record
without its count. The same script deletes the batch's payload and finishes the job when the last
image lands.

The job hash is a ``JobRecord`` (common/schemas.py). States: ``submitting`` (the producer is sending,
nothing finished yet) -> ``queued`` (all sent, nothing finished) -> ``running`` (an image finished)
-> ``done`` (every image has a record, at least one succeeded) | ``failed`` (none succeeded, or the
job as a whole failed: no live worker could serve it) | ``cancelled``. Cancelled images are
counted apart from failed ones (``cancelled``); a job that ends early gets a record for every
image it will never serve (common/closeout.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import redis

from common import keys
from common.errors import JobCancelledError, JobError
from common.schemas import TERMINAL_STATES, JobRecord, ResultRecord, hash_value

# Finishes an active job when every image has a record and the producer has sent everything: done
# if any image succeeded, failed if none did. A cancelled or failed job keeps its state.
_FINISH_LUA = """
local m = redis.call('HMGET', KEYS[1], 'n_images', 'done', 'failed', 'state', 'submit_complete', 'cancelled')
local st, n, ok = m[4], tonumber(m[1] or '0'), tonumber(m[2] or '0')
if m[5] == '1' and (st == 'submitting' or st == 'queued' or st == 'running')
   and (ok + tonumber(m[3] or '0') + tonumber(m[6] or '0')) >= n then
  local final = 'done'
  if ok == 0 and n > 0 then final = 'failed' end
  redis.call('HSET', KEYS[1], 'state', final, 'finished_s', ARGV[3])
end
"""

# KEYS: job, results, errors, batches, payload, accuracy, workers
# ARGV: batch_no, ttl_s, now, batch_state, worker ('' when none), then per image: index, status
#       (ok | failed | cancelled), record, label ('' when none), hit ('1' when the top-1 label is the label)
_WRITE_BATCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end
local new = {ok = 0, failed = 0, cancelled = 0}
for i = 6, #ARGV, 5 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    local status, label = ARGV[i + 1], ARGV[i + 3]
    new[status] = new[status] + 1
    if status ~= 'ok' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2]) end
    if label ~= '' and status ~= 'cancelled' then
      redis.call('HINCRBY', KEYS[6], 'n:' .. label, 1)
      if ARGV[i + 4] == '1' then redis.call('HINCRBY', KEYS[6], 'c:' .. label, 1) end
      if status == 'failed' then redis.call('HINCRBY', KEYS[6], 'f:' .. label, 1) end
    end
  end
end
for _, name in ipairs({'ok', 'failed', 'cancelled'}) do
  if new[name] > 0 then redis.call('HINCRBY', KEYS[1], name == 'ok' and 'done' or name, new[name]) end
end
local state = redis.call('HGET', KEYS[1], 'state')
if new.ok + new.failed > 0 and (state == 'submitting' or state == 'queued') then
  redis.call('HSET', KEYS[1], 'state', 'running')
end
if redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[4]) == 1 then
  if string.sub(ARGV[4], 1, 4) == 'dead' then
    redis.call('HINCRBY', KEYS[1], 'batches_dead', 1)
  else
    redis.call('HINCRBY', KEYS[1], 'batches_done', 1)
  end
end
if ARGV[5] ~= '' and new.ok + new.failed > 0 then redis.call('HINCRBY', KEYS[7], ARGV[5], new.ok + new.failed) end
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[1], 'updated_s', ARGV[3])
for _, k in ipairs({2, 3, 4, 6, 7}) do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
""" + _FINISH_LUA + """
return {new.ok, new.failed, new.cancelled}
"""

# KEYS: job ; ARGV: n_images, n_batches, now
_SUBMITTED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'n_images', ARGV[1], 'n_batches', ARGV[2], 'submit_complete', '1',
           'updated_s', ARGV[3], 'submitted_s', ARGV[3])
if redis.call('HGET', KEYS[1], 'state') == 'submitting' then
  redis.call('HSET', KEYS[1], 'state', 'queued')
end
""" + _FINISH_LUA + """
return redis.call('HGET', KEYS[1], 'state')
"""

# KEYS: job, progress ; ARGV: n_images, progress JSON, ttl_s
_ENQUEUED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'n_enqueued', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""

@dataclass
class JobStatus:
    """A job's record plus what is derived from it (pending images, failure reasons)."""

    job: JobRecord
    n_images: int
    error_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def state(self) -> str:
        return self.job.state

    @property
    def done(self) -> int:
        return self.job.done

    @property
    def failed(self) -> int:
        return self.job.failed

    @property
    def submit_complete(self) -> bool:
        return self.job.submit_complete

    @property
    def meta(self) -> dict[str, Any]:
        return self.job.as_dict()

    @property
    def cancelled(self) -> int:
        return self.job.cancelled

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def pending(self) -> int:
        return max(0, self.n_images - self.finished)

    @property
    def terminal(self) -> bool:
        return self.job.terminal

    def as_dict(self) -> dict[str, Any]:
        out = self.job.as_dict()
        out.update(n_images=self.n_images, pending=self.pending, error_reasons=self.error_reasons)
        created, end = self.job.created_s, self.job.finished_s or time.time()
        if created:
            out["elapsed_s"] = round(end - created, 3)
            # images the fleet ran (failed ones too), none while none succeeded: a cancelled or an
            # unservable job's records were written without running anything, not at a rate
            ran = self.done + self.failed
            out["images_per_s"] = round(ran / max(end - created, 1e-9), 2) if self.done else None
        # how many not-ok records error_reasons counted: a sample on big jobs (status(reasons=N))
        out["error_reasons_counted"] = sum(self.error_reasons.values())
        return out


_RECORD_FIELDS = frozenset(f.name for f in fields(JobRecord))


def _status(rec: ResultRecord) -> str:
    if rec.ok:
        return "ok"
    return "cancelled" if rec.error_code == JobCancelledError.code else "failed"


def _hit(rec: ResultRecord) -> bool:
    return bool(rec.ok and rec.label is not None and rec.top_k and str(rec.top_k[0].get("label")) == str(rec.label))


class JobStore:
    def __init__(self, conn: redis.Redis, result_ttl_s: int) -> None:
        self.conn = conn
        self.ttl_s = result_ttl_s
        self._submitted = conn.register_script(_SUBMITTED_LUA)
        self._enqueued = conn.register_script(_ENQUEUED_LUA)

    # -- producer side ---------------------------------------------------------------------
    def create_job(self, record: JobRecord) -> bool:
        """Create the job hash; False if it already exists (a resumed or repeated submit)."""
        now = time.time()
        record = replace(record, state="submitting", created_s=now, updated_s=now, done=0, failed=0,
                         batches_done=0, batches_dead=0, n_enqueued=0, submit_complete=False)
        key = keys.job(record.job_id)
        if not self.conn.hsetnx(key, "job_id", record.job_id):
            return False
        pipe = self.conn.pipeline(transaction=True)
        pipe.hset(key, mapping=record.encode())
        pipe.expire(key, self.ttl_s)
        pipe.zadd(keys.JOBS, {record.job_id: now})
        pipe.execute()
        return True

    def note_enqueued(self, job_id: str, n_images: int, progress: dict[str, Any]) -> None:
        """Record a batch as sent and the resume cursor in one round trip."""
        found = self._enqueued(keys=[keys.job(job_id), keys.job_progress(job_id)],
                               args=[n_images, json.dumps(progress), self.ttl_s])
        if not found:
            raise JobError(f"job {job_id} no longer exists (expired or deleted)")

    def progress(self, job_id: str) -> dict[str, Any] | None:
        raw = self.conn.get(keys.job_progress(job_id))
        return json.loads(raw) if raw else None

    def mark_submitted(self, job_id: str, n_images: int, n_batches: int) -> str:
        state = self._submitted(keys=[keys.job(job_id)], args=[n_images, n_batches, time.time()])
        if state is None:
            raise JobError(f"job {job_id} no longer exists (expired or deleted)")
        return state.decode() if isinstance(state, bytes) else str(state)

    # -- worker side -----------------------------------------------------------------------
    def queue_write_batch(self, pipe: Any, job_id: str, batch_no: int, records: list[ResultRecord],
                          payload_key: str, batch_state: str = "done") -> None:
        """Queue the idempotent write of one batch's records on ``pipe``: the caller adds its own
        commands to the same round trip and reads the reply with ``written(replies[i])``."""
        # a batch's records come from one worker; close-out's (cancel, unservable) from none. The script
        # counts a worker's ok and failed records, never cancelled ones
        args: list[Any] = [batch_no, self.ttl_s, time.time(), batch_state, records[0].worker if records else ""]
        for rec in records:
            args.extend((rec.index, _status(rec), rec.encode(), "" if rec.label is None else str(rec.label),
                         "1" if _hit(rec) else "0"))
        job_keys = [keys.job(job_id), keys.job_results(job_id), keys.job_errors(job_id),
                    keys.job_batches(job_id), payload_key, keys.job_accuracy(job_id), keys.job_workers(job_id)]
        pipe.eval(_WRITE_BATCH_LUA, len(job_keys), *job_keys, *args)

    @staticmethod
    def written(reply: Any, job_id: str) -> tuple[int, int]:
        """(new ok, new not ok - failed or cancelled) from the reply of a queued batch write."""
        new_ok, new_failed, new_cancelled = reply
        if new_ok < 0:
            raise JobError(f"job {job_id} no longer exists (expired or deleted)")
        return int(new_ok), int(new_failed) + int(new_cancelled)

    def write_batch(self, job_id: str, batch_no: int, records: list[ResultRecord], payload_key: str,
                    batch_state: str = "done") -> tuple[int, int]:
        """Write one batch's records in one round trip; returns (new ok, new failed). Safe to call twice."""
        pipe = self.conn.pipeline(transaction=False)
        self.queue_write_batch(pipe, job_id, batch_no, records, payload_key, batch_state)
        return self.written(pipe.execute()[0], job_id)

    def job_state(self, job_id: str) -> str | None:
        state = self.conn.hget(keys.job(job_id), "state")
        return state.decode() if state else None

    # -- queries ---------------------------------------------------------------------------
    def record(self, job_id: str) -> JobRecord:
        raw = self.conn.hgetall(keys.job(job_id))
        if not raw:
            raise JobError(f"no job {job_id!r} (unknown id, or its results expired)")
        return JobRecord.decode(raw)

    def meta(self, job_id: str) -> dict[str, Any]:
        return self.record(job_id).as_dict()

    def status(self, job_id: str, reasons: int = 200) -> JobStatus:
        job = self.record(job_id)
        return JobStatus(job=job, n_images=job.sent_images, error_reasons=self.error_reasons(job_id, reasons))

    def error_reasons(self, job_id: str, limit: int) -> dict[str, int]:
        """Counts of failure reasons among up to ``limit`` failed images."""
        counts: dict[str, int] = {}
        for _, raw in self.conn.hscan_iter(keys.job_errors(job_id), count=200):
            rec = ResultRecord.decode(raw)
            reason = rec.error or "unknown"
            counts[reason] = counts.get(reason, 0) + 1
            limit -= 1
            if limit <= 0:
                break
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def iter_results(self, job_id: str, chunk: int = 1000, failed_only: bool = False
                     ) -> Iterator[ResultRecord]:
        """Records in image order, ``chunk`` at a time (bounded memory for huge jobs)."""
        job = self.record(job_id)
        total = job.sent_images
        key = keys.job_errors(job_id) if failed_only else keys.job_results(job_id)
        for start in range(0, total, chunk):
            indices = list(range(start, min(start + chunk, total)))
            for raw in self.conn.hmget(key, indices):
                if raw is not None:
                    yield ResultRecord.decode(raw)

    def list_jobs(self, limit: int = 50) -> list[JobRecord]:
        ids = [i.decode() for i in self.conn.zrevrange(keys.JOBS, 0, limit - 1)]
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        out = []
        stale = []
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append(JobRecord.decode(raw))
            else:
                stale.append(job_id)
        if stale:
            self.conn.zrem(keys.JOBS, *stale)
        return out

    def mark_task_queued(self, job_id: str, **changes: Any) -> str:
        """A calibration or conversion job's upload is complete: set ``changes`` and move it from
        ``submitting`` to ``queued`` (never past a cancel that came meanwhile); returns its state.
        Not ``mark_submitted``, whose counters would finish a job of few or no images at once."""
        self.set_fields(job_id, submit_complete=True, **changes)
        script = ("if redis.call('HGET', KEYS[1], 'state') == 'submitting' then "
                  "redis.call('HSET', KEYS[1], 'state', 'queued') end return redis.call('HGET', KEYS[1], 'state')")
        state = self.conn.eval(script, 1, keys.job(job_id))
        return state.decode() if isinstance(state, bytes) else str(state)

    def set_fields(self, job_id: str, **changes: Any) -> None:
        """Update fields of a job (calibration jobs report their progress and result this way)."""
        unknown = set(changes) - _RECORD_FIELDS
        if unknown:
            raise ValueError(f"not job record fields: {sorted(unknown)}")
        values = {k: hash_value(v) for k, v in changes.items() if v is not None}
        values["updated_s"] = str(time.time())
        self.conn.hset(keys.job(job_id), mapping=values)

    def finish(self, job_id: str, state: str, **changes: Any) -> None:
        if state not in TERMINAL_STATES:
            raise ValueError(f"not a terminal state: {state}")
        self.set_fields(job_id, state=state, finished_s=time.time(), **changes)

    def add_progress(self, job_id: str, n: int, failed: int = 0) -> None:
        pipe = self.conn.pipeline(transaction=False)
        if n:
            pipe.hincrby(keys.job(job_id), "done", n)
        if failed:
            pipe.hincrby(keys.job(job_id), "failed", failed)
        pipe.execute()

    def delete(self, job_id: str) -> None:
        """Remove a job: its record, results and counters, and the payloads it still holds (named by
        batch number, up to the most batches the job counted or sent: no keyspace scan per job)."""
        job = self.conn.hmget(keys.job(job_id), "n_batches", "eval_images", "batch_size")
        progress = json.loads(self.conn.get(keys.job_progress(job_id)) or "{}")
        n = max(int(job[0] or 0), int(progress.get("batches", 0)))
        # a calibration job's evaluation payloads are numbered apart, in batches of its batch size
        n_eval = -(-int(job[1] or 0) // max(1, int(job[2] or 1)))
        payloads = [keys.payload(job_id, b) for b in range(n)] + [keys.eval_payload(job_id, b) for b in range(n_eval)]
        for start in range(0, len(payloads), 10_000):  # bounded DEL calls for million-image jobs
            self.conn.delete(*payloads[start:start + 10_000])
        self.conn.delete(*keys.job_keys(job_id))
        self.conn.zrem(keys.JOBS, job_id)
