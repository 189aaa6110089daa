"""Visibility leases: keep the batches this worker holds invisible to kombu's restore sweep.

kombu's Redis transport emulates acks: a delivered message sits in ``unacked`` with its delivery
time in ``unacked_index``, and any worker's sweep puts back every message older than
``visibility_timeout``. A timeout long enough for the slowest batch (a TensorRT engine build can
take minutes) would leave a dead worker's batch stranded for that long; a short one would run
slow batches twice. So the timeout is short and this consumer step renews, every
``lease_refresh_s``, the timestamp of each message this worker holds (reserved, running, or
waiting on a retry countdown). ``ZADD XX`` only touches entries that still exist, so a message
already handed back is never resurrected.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state
from redis.backoff import NoBackoff
from redis.retry import Retry

from common import keys, redisconn
from workers.pipeline import context

log = logging.getLogger("trtbatch.lease")


def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker process holds."""
    tags = []
    for group in (state.reserved_requests, state.active_requests, state.scheduled_requests):
        for req in list(group):
            message = getattr(req, "message", None)
            tag = getattr(message, "delivery_tag", None)
            if tag:
                tags.append(str(tag))
    return tags


def renew(conn: redis.Redis, tags: list[str], now: float | None = None) -> int:
    """Push the lease of each tag to ``now``; returns how many were still held."""
    if not tags:
        return 0
    now = time.time() if now is None else now
    return int(conn.zadd(keys.BROKER_UNACKED_INDEX, dict.fromkeys(tags, now), xx=True, ch=True))


class LeaseStep(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._tref = None
        self._conn: redis.Redis | None = None

    def start(self, c: Any) -> None:
        settings, _ = context.configured()
        # No retries: this runs on the consumer's event loop, which a retrying client would hold for
        # the whole of a Redis outage. A renewal missed now is made at the next tick.
        self._conn = redisconn.client(settings, retry=Retry(NoBackoff(), 0), socket_timeout=2)
        self._tref = c.timer.call_repeatedly(settings.lease_refresh_s, self.tick, priority=10)

    def tick(self) -> None:
        try:
            renew(self._conn, held_delivery_tags())  # type: ignore[arg-type]
        except redis.RedisError as exc:
            log.warning("lease renewal failed (will retry): %s", exc)

    def stop(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
