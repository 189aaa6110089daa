"""The orphan sweep on a real redis-server, against messages published and consumed by kombu itself."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from common import closeout, keys
from common.celery_app import INFER_TASK, make_app
from common.config import Settings
from common.schemas import BatchTask, JobRecord
from common.store import JobStore
from tests.helpers import RedisServer
from workers.process.orphans import find_orphans, message_batch, sweep

QUEUE = "trtbatch.any.fp32"
JOB = "20250101-000000-0rphan00"


@pytest.fixture()
def app(redis_server: RedisServer, store_conn: redis.Redis):
    app = make_app(Settings.from_env({}), f"{redis_server.url}?db=1")
    yield app
    app.close()


def _task(batch_no: int, n: int = 4) -> BatchTask:
    return BatchTask(job_id=JOB, batch_no=batch_no, payload_key=keys.payload(JOB, batch_no), version_id="vabc",
                     model="digits", precision="fp32", target="any", batch_size=4, n_images=n,
                     start_index=batch_no * 4, top_k=3)


def _job(conn: redis.Redis, sent_batches: int, sent_images: int, **meta: object) -> JobStore:
    store = JobStore(conn, 3600)
    store.create_job(JobRecord(job_id=JOB, model="digits", version_id="vabc", precision="fp32", target="any",
                               queue=QUEUE, batch_size=4, top_k=3, include_outputs=False, **meta))  # type: ignore[arg-type]
    conn.set(keys.job_progress(JOB), json.dumps({"batches": sent_batches, "images": sent_images}))
    return store


def _send(app, *batches: int) -> None:
    with app.producer_or_acquire() as producer:
        for b in batches:
            app.send_task(INFER_TASK, args=[_task(b).encode()], queue=QUEUE, producer=producer)


def _queued(conn: redis.Redis) -> list[BatchTask]:
    return [BatchTask.decode(json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0])
            for raw in conn.lrange(keys.broker_queue(QUEUE), 0, -1)]


def test_message_batch_ignores_other_messages() -> None:
    assert message_batch({"body": "bm90IGpzb24=", "properties": {"body_encoding": "base64"}}) is None
    assert message_batch({}) is None


def test_only_sent_unwritten_batches_without_a_message_are_orphans(app, store_conn: redis.Redis) -> None:
    store = _job(store_conn, sent_batches=6, sent_images=22)
    for b in range(7):  # batch 6 is not sent yet (beyond the cursor): its payload is being written
        store_conn.set(keys.payload(JOB, b), b"payload")
    _send(app, 1, 0)  # 1 is delivered first (unacked), 0 stays queued
    with app.connection_for_read() as conn:
        message = conn.default_channel.basic_get(QUEUE, no_ack=False)
        assert message_batch(json.loads(store_conn.hget(keys.BROKER_UNACKED, message.delivery_tag))[0]) == (JOB, 1)
        store.write_batch(JOB, 2, [], keys.payload(JOB, 2))  # written (its payload goes with it)
        store_conn.hset(keys.job_batches(JOB), 3, "done")  # written, payload left behind by a duplicate
        # 4 and 5: sent, unwritten, no message anywhere
        assert sorted(find_orphans(store_conn)) == [(JOB, 4), (JOB, 5)]
        assert sweep(store_conn, app, confirm_s=5, now=1000.0) == []  # first sighting: only noted
        assert sweep(store_conn, app, confirm_s=5, now=1003.0) == []  # not long enough
        before = {t.batch_no for t in _queued(store_conn)}
        assert sweep(store_conn, app, confirm_s=5, now=1006.0) == [(JOB, 4), (JOB, 5)]
        resent = {t.batch_no: t for t in _queued(store_conn)}
        assert set(resent) - before == {4, 5}
        assert resent[5] == _task(5, n=2)  # rebuilt as the producer built it: the last batch has 22 - 20 images
        assert resent[4] == _task(4)
        assert not store_conn.exists(keys.ORPHANS)  # claimed
        assert find_orphans(store_conn) == {}
        message.ack()
    assert sorted(find_orphans(store_conn)) == [(JOB, 1)]  # acked without being written: orphaned too


def test_finished_jobs_and_vanished_orphans_are_forgotten(app, store_conn: redis.Redis) -> None:
    store = _job(store_conn, sent_batches=2, sent_images=8)
    for b in range(2):
        store_conn.set(keys.payload(JOB, b), b"payload")
    assert sweep(store_conn, app, confirm_s=5, now=1000.0) == []
    assert store_conn.hlen(keys.ORPHANS) == 2
    _send(app, 0)  # its message shows up after all (it was in transit)
    assert sweep(store_conn, app, confirm_s=5, now=1001.0) == []
    assert store_conn.hkeys(keys.ORPHANS) == [f"{JOB}:1".encode()]
    closeout.cancel(store, JOB)
    assert find_orphans(store_conn) == {}
    assert sweep(store_conn, app, confirm_s=5, now=1010.0) == []
    assert not store_conn.exists(keys.ORPHANS)
    assert [t.batch_no for t in _queued(store_conn)] == [0]


@pytest.mark.parametrize("kind", ["calibration", "conversion"])
def test_payloads_of_whole_job_tasks_are_never_sent_as_batches(app, store_conn: redis.Redis, kind: str) -> None:
    """A calibration job's image payloads are read by its one message; sending them again as inference
    batches (what the sweep once did to a calibration job that ran longer than a sweep) wrote inference
    records into the calibration job and finished it as done."""
    _job(store_conn, sent_batches=3, sent_images=12, kind=kind)
    for b in range(3):
        store_conn.set(keys.payload(JOB, b), b"payload")
    assert find_orphans(store_conn) == {}
    assert sweep(store_conn, app, confirm_s=0, now=1000.0) == []
    assert sweep(store_conn, app, confirm_s=0, now=1001.0) == []
    assert _queued(store_conn) == []


def test_a_resent_orphan_is_consumed_before_the_queue_behind_it(app, store_conn: redis.Redis) -> None:
    """An orphan is already late: sent again, it goes to the head of its queue (where kombu puts back
    the messages it restores), not behind every batch the producer queued since."""
    _job(store_conn, sent_batches=12, sent_images=48)
    store_conn.set(keys.payload(JOB, 11), b"payload")  # the lost one
    for b in range(11):  # ten more waiting in the queue (and their payloads)
        store_conn.set(keys.payload(JOB, b), b"payload")
    _send(app, *range(11))
    assert sweep(store_conn, app, confirm_s=0, now=1000.0) == []
    assert sweep(store_conn, app, confirm_s=0, now=1001.0) == [(JOB, 11)]
    with app.connection_for_read() as conn:
        first = conn.default_channel.basic_get(QUEUE, no_ack=True)
        assert BatchTask.decode(first.decode()[0][0]).batch_no == 11
    assert sorted(t.batch_no for t in _queued(store_conn)) == list(range(11))
