"""Orphan sweep: send again a batch whose Celery message was lost in transit.

kombu's Redis transport takes a message off its queue with BRPOP and records it in ``unacked``
only afterwards, in another round trip from the worker. A worker killed between the two (SIGKILL,
the OOM killer, a lost node), or a connection that drops with the reply in flight, takes the
message with it: it is in no queue and not in ``unacked``, so neither kombu's visibility sweep nor
a lease (workers/lease.py) can bring it back, and its job would wait forever. (The SIGKILL chaos
test in tests/integration/test_faults.py loses 2 to 8 batches this way in 20 kills.)

So every ``visibility_timeout_s / 5`` one worker of the fleet (whichever takes a short Redis lock)
compares the batches that still have a claim-check payload - a payload is deleted when its batch
is written - with the messages that exist, queued or unacked, read in one MULTI. A batch that its
producer has sent (below the job's resume cursor), that is not written and has no message in two
sweeps at least ``visibility_timeout_s / 2`` apart is sent again, rebuilt from the job's metadata.
A false alarm costs one duplicate delivery, which finds the batch written and does nothing.

The same sweep applies the unservable rule (common/closeout.py) to recent active jobs, so a job
that no live worker serves ends after ``unservable_grace_s`` even when nobody is looking at it.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import redis
from celery import bootsteps
from redis.backoff import NoBackoff
from redis.retry import Retry

from common import closeout, fleet, keys, redisconn
from common.celery_app import INFER_TASK
from common.schemas import BatchTask, JobRecord
from common.store import JobStore
from workers.pipeline import context

log = logging.getLogger("trtbatch.orphans")
ACTIVE = ("submitting", "queued", "running")
#: How many of a queue's newest messages are searched for the one just sent (others may publish too).
TO_HEAD_SCAN = 64
# KEYS: the queue's list ; ARGV: task id, how many newest messages to search. Kombu LPUSHes and
# consumers BRPOP: the head, popped next, is the right end.
_TO_HEAD_LUA = """
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  if string.find(raw, ARGV[1], 1, true) then
    redis.call('LREM', KEYS[1], 1, raw)
    redis.call('RPUSH', KEYS[1], raw)
    return 1
  end
end
return 0
"""


def message_batch(message: dict[str, Any]) -> tuple[str, int] | None:
    """(job id, batch no) of a kombu message carrying an inference batch, else None."""
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        task = json.loads(body)[0][0]
        return str(task["job_id"]), int(task["batch_no"])
    except Exception:  # another task's message, or not ours at all
        return None


def _unwritten(conn: redis.Redis) -> dict[str, set[int]]:
    """Job id -> batches that still have a payload."""
    out: dict[str, set[int]] = {}
    for key in conn.scan_iter(match=keys.payload("*", "*"), count=1000):  # type: ignore[arg-type]
        parsed = keys.parse_payload(key)
        if parsed is not None:
            out.setdefault(parsed[0], set()).add(parsed[1])
    return out


def find_orphans(conn: redis.Redis) -> dict[tuple[str, int], JobRecord]:
    """Sent, unwritten batches of active jobs that have no message: (job, batch) -> job record."""
    candidates: dict[tuple[str, int], JobRecord] = {}
    for job_id, batches in _unwritten(conn).items():
        pipe = conn.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.get(keys.job_progress(job_id))
        ordered = sorted(batches)
        pipe.hmget(keys.job_batches(job_id), ordered)
        raw, progress, written = pipe.execute()
        if not raw:
            continue
        job = JobRecord.decode(raw)
        if job.state not in ACTIVE or job.kind != "inference":  # calibration and conversion payloads are
            continue  # read by their one job message, never sent as batches
        sent_batches = job.n_batches if job.submit_complete else (json.loads(progress) if progress else {}).get(
            "batches", 0)
        for b, w in zip(ordered, written, strict=True):
            if w is None and b < sent_batches:
                candidates[(job_id, b)] = job
    if not candidates:
        return {}
    queues = sorted({job.queue for job in candidates.values()})
    pipe = conn.pipeline(transaction=True)  # one snapshot: a message moves between these atomically
    for queue in queues:
        pipe.lrange(keys.broker_queue(queue), 0, -1)
    pipe.hvals(keys.BROKER_UNACKED)
    *queued, unacked = pipe.execute()
    messages = [json.loads(raw) for q in queued for raw in q] + [json.loads(raw)[0] for raw in unacked]
    present = {message_batch(m) for m in messages}
    return {jb: job for jb, job in candidates.items() if jb not in present}


def sent_images(conn: redis.Redis, job: JobRecord) -> int:
    if job.submit_complete:
        return job.n_images
    progress = conn.get(keys.job_progress(job.job_id))
    return int(json.loads(progress).get("images", 0)) if progress else 0


def resend(app: Any, conn: redis.Redis, batch_no: int, job: JobRecord) -> None:
    """Publish the batch's message again, as the producer built it (producer/submit.py)."""
    size = job.batch_size
    start = batch_no * size
    task = BatchTask(job_id=job.job_id, batch_no=batch_no, payload_key=keys.payload(job.job_id, batch_no),
                     version_id=job.version_id, model=job.model, precision=job.precision, target=job.target,
                     batch_size=size, n_images=min(size, sent_images(conn, job) - start), start_index=start,
                     int8_source=job.int8_source, top_k=job.top_k, include_outputs=job.include_outputs,
                     engine=job.engine)
    sent = app.send_task(INFER_TASK, args=[task.encode()], queue=job.queue)
    # Kombu publishes to the tail of the queue; a batch this late goes to the head, where kombu's own
    # sweep puts back the messages it restores. Behind a full queue (max_inflight_batches) on a busy
    # machine it waited 15-25 s more (tests/integration/test_faults.py's chaos test, under load).
    conn.eval(_TO_HEAD_LUA, 1, keys.broker_queue(job.queue), sent.id, TO_HEAD_SCAN)


def sweep(conn: redis.Redis, app: Any, confirm_s: float, now: float | None = None) -> list[tuple[str, int]]:
    """One sweep; returns the batches sent again."""
    now = time.time() if now is None else now
    orphans = find_orphans(conn)
    fields = {f"{jb[0]}:{jb[1]}": jb for jb in orphans}
    seen = {k.decode(): float(v) for k, v in conn.hgetall(keys.ORPHANS).items()}
    gone = [f for f in seen if f not in fields]
    if gone:
        conn.hdel(keys.ORPHANS, *gone)
    resent = []
    for name, jb in fields.items():
        first = seen.get(name)
        if first is None:
            conn.hsetnx(keys.ORPHANS, name, now)
        elif now - first >= confirm_s and conn.hdel(keys.ORPHANS, name):  # HDEL: one sender only
            resend(app, conn, jb[1], orphans[jb])
            log.warning("batch %s/%d had no message for %.0fs (lost in transit); sent it again", *jb, now - first)
            resent.append(jb)
    return resent


class OrphanStep(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._tref = None
        self._conn: redis.Redis | None = None
        self._app: Any = None

    def start(self, c: Any) -> None:
        settings, _ = context.configured()
        self._settings = settings
        # no retries: a sweep during a Redis outage fails at once (and logs) instead of holding the
        # consumer's event loop; the next tick tries again
        self._conn = redisconn.client(settings, retry=Retry(NoBackoff(), 0))
        self._app = c.app
        self.interval_s = max(1.0, settings.visibility_timeout_s / 5)
        self.confirm_s = settings.visibility_timeout_s / 2
        self.tick()  # at once too: a worker that keeps being killed may never live a whole interval
        self._tref = c.timer.call_repeatedly(self.interval_s, self.tick, priority=10)

    def tick(self) -> None:
        try:
            lock_ms = int(self.interval_s * 1000) - 100
            if self._conn.set(keys.ORPHANS_LOCK, "1", nx=True, px=lock_ms):  # type: ignore[union-attr]
                sweep(self._conn, self._app, self.confirm_s)  # type: ignore[arg-type]
                self._sweep_unservable()
        except Exception as exc:  # never let the sweep take the consumer down
            log.warning("orphan sweep failed (will retry): %s", exc)

    def _sweep_unservable(self) -> None:
        """Jobs that no live worker serves end after the grace period even if nobody looks at them."""
        store = JobStore(self._conn, self._settings.result_ttl_s)  # type: ignore[arg-type]
        workers = fleet.live_workers(self._conn, self._settings.heartbeat_ttl_s)  # type: ignore[arg-type]
        closeout.sweep_unservable(store, workers, self._settings.unservable_grace_s)

    def stop(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
