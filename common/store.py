"""The result store: job metadata, counters, per-image results and errors, in Redis.

Writes are idempotent: a batch delivered twice (a worker lost mid-batch, a lease that lapsed)
leaves exactly one record per image, because records are written with HSETNX and the counters
only count fields that were new - all inside one Lua script, so a crash can never leave a record
without its count. The same script deletes the batch's payload and finishes the job when the last
image lands.

Job hash fields: job_id model version_id precision target queue batch_size top_k int8_source
state created_s updated_s finished_s submit_complete n_images n_batches done failed
batches_done batches_dead cancelled_s. States: submitting -> queued -> done | cancelled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from common import keys
from common.errors import JobError
from common.schemas import ResultRecord

STATES = ("submitting", "queued", "running", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")

# Finishes the job when every image has a record and the producer has sent everything.
_FINISH_LUA = """
local m = redis.call('HMGET', KEYS[1], 'n_images', 'done', 'failed', 'state', 'submit_complete')
if m[5] == '1' and m[4] ~= 'done' and m[4] ~= 'cancelled'
   and (tonumber(m[2] or '0') + tonumber(m[3] or '0')) >= tonumber(m[1] or '0') then
  redis.call('HSET', KEYS[1], 'state', 'done', 'finished_s', ARGV[3])
end
"""

# KEYS: job, results, errors, batches, payload, jobs-index
# ARGV: batch_no, ttl_s, now, batch_state, then (index, ok, record) triples
_WRITE_BATCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local new_ok, new_failed = 0, 0
for i = 5, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    if ARGV[i + 1] == '1' then
      new_ok = new_ok + 1
    else
      new_failed = new_failed + 1
      redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    end
  end
end
if new_ok > 0 then redis.call('HINCRBY', KEYS[1], 'done', new_ok) end
if new_failed > 0 then redis.call('HINCRBY', KEYS[1], 'failed', new_failed) end
if redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[4]) == 1 then
  if string.sub(ARGV[4], 1, 4) == 'dead' then
    redis.call('HINCRBY', KEYS[1], 'batches_dead', 1)
  else
    redis.call('HINCRBY', KEYS[1], 'batches_done', 1)
  end
end
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[1], 'updated_s', ARGV[3])
for k = 2, 4 do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
""" + _FINISH_LUA + """
return {new_ok, new_failed}
"""

# KEYS: job ; ARGV: n_images, n_batches, now
_SUBMITTED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'n_images', ARGV[1], 'n_batches', ARGV[2], 'submit_complete', '1',
           'updated_s', ARGV[3])
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

_INT_FIELDS = ("batch_size", "top_k", "n_images", "n_batches", "done", "failed", "batches_done",
               "batches_dead", "n_enqueued")
_FLOAT_FIELDS = ("created_s", "updated_s", "finished_s", "cancelled_s")


@dataclass
class JobStatus:
    job_id: str
    state: str
    meta: dict[str, Any]
    n_images: int
    done: int
    failed: int
    submit_complete: bool
    error_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def pending(self) -> int:
        return max(0, self.n_images - self.finished)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.meta)
        out.update(job_id=self.job_id, state=self.state, n_images=self.n_images, done=self.done,
                   failed=self.failed, pending=self.pending, submit_complete=self.submit_complete,
                   error_reasons=self.error_reasons)
        created, end = out.get("created_s"), out.get("finished_s") or time.time()
        if created:
            out["elapsed_s"] = round(end - created, 3)
            out["images_per_s"] = round(self.finished / max(end - created, 1e-9), 2)
        return out


def _parse_meta(raw: dict[bytes, bytes]) -> dict[str, Any]:
    meta: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in _INT_FIELDS:
        if name in meta:
            meta[name] = int(meta[name])
    for name in _FLOAT_FIELDS:
        if name in meta:
            meta[name] = float(meta[name])
    meta["submit_complete"] = meta.get("submit_complete") == "1"
    return meta


class JobStore:
    def __init__(self, conn: redis.Redis, result_ttl_s: int) -> None:
        self.conn = conn
        self.ttl_s = result_ttl_s
        self._submitted = conn.register_script(_SUBMITTED_LUA)
        self._enqueued = conn.register_script(_ENQUEUED_LUA)

    # -- producer side ---------------------------------------------------------------------
    def create_job(self, job_id: str, meta: dict[str, Any]) -> bool:
        """Create the job hash; False if it already exists (a resumed or repeated submit)."""
        now = time.time()
        fields = {k: str(v) for k, v in meta.items() if v is not None}
        fields.update(job_id=job_id, state="submitting", created_s=str(now), updated_s=str(now),
                      done="0", failed="0", batches_done="0", batches_dead="0", n_enqueued="0",
                      submit_complete="0")
        key = keys.job(job_id)
        if not self.conn.hsetnx(key, "job_id", job_id):
            return False
        pipe = self.conn.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.ttl_s)
        pipe.zadd(keys.JOBS, {job_id: now})
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
    def write_batch(self, job_id: str, batch_no: int, records: list[ResultRecord], payload_key: str,
                    batch_state: str = "done", extra: Callable[[Any], None] | None = None) -> tuple[int, int]:
        """Write one batch's records - and whatever ``extra`` queues on the same pipeline - in one
        round trip; returns (new ok, new failed). Safe to call twice."""
        args: list[Any] = [batch_no, self.ttl_s, time.time(), batch_state]
        for rec in records:
            args.extend((rec.index, "1" if rec.ok else "0", rec.encode()))
        job_keys = [keys.job(job_id), keys.job_results(job_id), keys.job_errors(job_id),
                    keys.job_batches(job_id), payload_key]
        pipe = self.conn.pipeline(transaction=False)
        pipe.eval(_WRITE_BATCH_LUA, len(job_keys), *job_keys, *args)
        if extra is not None:
            extra(pipe)
        new_ok, new_failed = pipe.execute()[0]
        if new_ok < 0:
            raise JobError(f"job {job_id} no longer exists (expired or deleted)")
        return int(new_ok), int(new_failed)

    def job_state(self, job_id: str) -> str | None:
        state = self.conn.hget(keys.job(job_id), "state")
        return state.decode() if state else None

    # -- queries ---------------------------------------------------------------------------
    def meta(self, job_id: str) -> dict[str, Any]:
        raw = self.conn.hgetall(keys.job(job_id))
        if not raw:
            raise JobError(f"no job {job_id!r} (unknown id, or its results expired)")
        return _parse_meta(raw)

    def status(self, job_id: str, reasons: int = 200) -> JobStatus:
        meta = self.meta(job_id)
        n_images = meta["n_images"] if meta["submit_complete"] else meta.get("n_enqueued", 0)
        return JobStatus(job_id=job_id, state=meta["state"], meta=meta, n_images=n_images,
                         done=meta.get("done", 0), failed=meta.get("failed", 0),
                         submit_complete=meta["submit_complete"],
                         error_reasons=self.error_reasons(job_id, reasons))

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
        meta = self.meta(job_id)
        total = meta["n_images"] if meta["submit_complete"] else meta.get("n_enqueued", 0)
        key = keys.job_errors(job_id) if failed_only else keys.job_results(job_id)
        for start in range(0, total, chunk):
            indices = list(range(start, min(start + chunk, total)))
            for raw in self.conn.hmget(key, indices):
                if raw is not None:
                    yield ResultRecord.decode(raw)

    def list_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = [i.decode() for i in self.conn.zrevrange(keys.JOBS, 0, limit - 1)]
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        out = []
        stale = []
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append(_parse_meta(raw))
            else:
                stale.append(job_id)
        if stale:
            self.conn.zrem(keys.JOBS, *stale)
        return out

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Update metadata of a job (calibration jobs report their progress and result this way)."""
        values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items() if v is not None}
        values["updated_s"] = str(time.time())
        self.conn.hset(keys.job(job_id), mapping=values)

    def finish(self, job_id: str, state: str, **fields: Any) -> None:
        if state not in TERMINAL:
            raise ValueError(f"not a terminal state: {state}")
        self.set_fields(job_id, state=state, finished_s=str(time.time()), **fields)

    def add_progress(self, job_id: str, n: int, failed: int = 0) -> None:
        pipe = self.conn.pipeline(transaction=False)
        if n:
            pipe.hincrby(keys.job(job_id), "done", n)
        if failed:
            pipe.hincrby(keys.job(job_id), "failed", failed)
        pipe.execute()

    def cancel(self, job_id: str) -> str:
        meta = self.meta(job_id)
        if meta["state"] in TERMINAL:
            return meta["state"]
        self.conn.hset(keys.job(job_id), mapping={"state": "cancelled", "cancelled_s": time.time()})
        return "cancelled"

    def delete(self, job_id: str) -> None:
        self.conn.delete(*keys.job_keys(job_id))
        self.conn.zrem(keys.JOBS, job_id)
