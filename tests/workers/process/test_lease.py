"""Visibility leases on a real redis-server, against kombu's own unacked index."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from celery.worker import state

from common import keys
from common.celery_app import INFER_TASK, make_app
from common.config import Settings
from tests.helpers import RedisServer
from workers.process.lease import held_delivery_tags, renew


def test_renew_nothing(store_conn: redis.Redis) -> None:
    assert renew(store_conn, []) == 0
    assert not store_conn.exists(keys.BROKER_UNACKED_INDEX)


def test_renew_updates_only_tags_still_held(store_conn: redis.Redis) -> None:
    store_conn.zadd(keys.BROKER_UNACKED_INDEX, {"tag-a": 100.0, "tag-b": 100.0, "other": 100.0})
    assert renew(store_conn, ["tag-a", "tag-b", "handed-back"], now=250.0) == 2
    assert store_conn.zscore(keys.BROKER_UNACKED_INDEX, "tag-a") == 250.0
    assert store_conn.zscore(keys.BROKER_UNACKED_INDEX, "tag-b") == 250.0
    assert store_conn.zscore(keys.BROKER_UNACKED_INDEX, "other") == 100.0  # another worker's message
    assert store_conn.zscore(keys.BROKER_UNACKED_INDEX, "handed-back") is None  # never resurrected (ZADD XX)
    before = time.time()
    assert renew(store_conn, ["tag-a"]) == 1
    assert store_conn.zscore(keys.BROKER_UNACKED_INDEX, "tag-a") >= before


def test_renew_a_real_kombu_delivery(redis_server: RedisServer, store_conn: redis.Redis) -> None:
    queue = f"trtbatch.unit.{uuid.uuid4().hex[:8]}"
    app = make_app(Settings.from_env({}), f"{redis_server.url}?db=1")
    try:
        with app.producer_or_acquire() as producer:
            app.send_task(INFER_TASK, args=[{"job_id": "x"}], queue=queue, producer=producer)
        with app.connection_for_read() as conn:
            message = conn.default_channel.basic_get(queue, no_ack=False)
            assert message is not None
            tag = str(message.delivery_tag)
            delivered = store_conn.zscore(keys.BROKER_UNACKED_INDEX, tag)
            assert delivered is not None and store_conn.hexists(keys.BROKER_UNACKED, tag)
            assert renew(store_conn, [tag], now=delivered + 60) == 1
            assert store_conn.zscore(keys.BROKER_UNACKED_INDEX, tag) == pytest.approx(delivered + 60)
            message.ack()
            assert renew(store_conn, [tag], now=delivered + 120) == 0
            assert store_conn.zscore(keys.BROKER_UNACKED_INDEX, tag) is None
    finally:
        app.close()


class _Message:
    def __init__(self, tag: str) -> None:
        self.delivery_tag = tag


class _Request:
    """Stands in for celery.worker.request.Request in the worker's (weak) request sets."""

    def __init__(self, message: _Message | None) -> None:
        self.message = message


def test_held_delivery_tags() -> None:
    held = [_Request(_Message(f"t{i}")) for i in range(3)]
    unheld = _Request(None)
    state.reserved_requests.add(held[0])
    state.active_requests.add(held[1])
    state.scheduled_requests.add(held[2])
    state.reserved_requests.add(unheld)
    try:
        assert sorted(held_delivery_tags()) == ["t0", "t1", "t2"]
    finally:
        state.reserved_requests.discard(held[0])
        state.active_requests.discard(held[1])
        state.scheduled_requests.discard(held[2])
        state.reserved_requests.discard(unheld)
    assert held_delivery_tags() == []
