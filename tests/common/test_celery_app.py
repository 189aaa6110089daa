"""The Celery app: delivery guarantees, transport options, serializers, and the real broker keys."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from common import keys
from common.celery_app import INFER_TASK, PUBLISH_RETRY_POLICY, check_serializers, make_app
from common.config import Settings
from common.errors import ConfigError
from tests.helpers import RedisServer

URL = "unix:///tmp/trtbatch-unit-never-started.sock"


@pytest.fixture()
def app() -> Iterator[Celery]:
    a = make_app(Settings.from_env({"TRTBATCH_VISIBILITY_TIMEOUT_S": "17", "TRTBATCH_RESTORE_INTERVAL_S": "3"}), URL)
    yield a
    a.close()


def test_delivery_guarantees(app: Celery) -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True and conf.result_backend is None
    assert conf.task_default_queue == "trtbatch.any.any.fp32"
    assert conf.broker_url == "redis+socket:///tmp/trtbatch-unit-never-started.sock"
    assert conf.broker_use_ssl is None


def test_serializers(app: Celery) -> None:
    conf = app.conf
    assert sorted(conf.accept_content) == ["json", "msgpack"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"


def test_transport_options(app: Celery) -> None:
    opts = app.conf.broker_transport_options
    assert opts["visibility_timeout"] == 17
    assert opts["unacked_restore_interval"] == 3
    assert opts["unacked_restore_throttle"] == 1
    assert opts["global_keyprefix"] == keys.BROKER_PREFIX == "trtbatch:celery:"


def test_task_events_follow_the_setting() -> None:
    off = make_app(Settings.from_env({}), URL)
    on = make_app(Settings.from_env({"TRTBATCH_TASK_EVENTS": "1"}), URL)
    assert off.conf.worker_send_task_events is False and off.conf.task_send_sent_event is False
    assert on.conf.worker_send_task_events is True and on.conf.task_send_sent_event is True


def test_tls_and_credentials_reach_the_broker() -> None:
    settings = Settings.from_env({"TRTBATCH_REDIS_PASSWORD": "p@ss:word", "TRTBATCH_REDIS_USERNAME": "svc",
                                  "TRTBATCH_REDIS_TLS_CA_FILE": "/etc/ca.pem"})
    a = make_app(settings, "rediss://redis.example:6380/2")
    assert a.conf.broker_url == "rediss://svc:p%40ss%3Aword@redis.example:6380/2"
    assert a.conf.broker_use_ssl["ssl_ca_certs"] == "/etc/ca.pem"


@pytest.mark.parametrize("override", [
    {"accept_content": ["json", "pickle"]},
    {"accept_content": ["json", "application/x-python-serialize"]},  # pickle's content type
    {"accept_content": ["PICKLE"]},
    {"task_serializer": "pickle"},
    {"result_serializer": "pickle"},
    {"event_serializer": "pickle"},
])
def test_pickle_is_refused(override: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="refusing to run: pickle is configured"):
        make_app(Settings.from_env({}), URL, **override)


def test_check_serializers_accepts_the_defaults(app: Celery) -> None:
    check_serializers(app.conf)
    app.conf.accept_content = ["application/json", "msgpack"]
    check_serializers(app.conf)
    app.conf.accept_content = ["json", "application/x-python-serialize"]
    with pytest.raises(ConfigError):
        check_serializers(app.conf)


def test_messages_land_under_the_broker_prefix_in_the_store_database(redis_server: RedisServer,
                                                                     store_conn: redis.Redis) -> None:
    """With a unix URL naming a database (?db=1), Celery's messages go to that database too, under
    trtbatch:celery:<queue>, not silently to database 0."""
    queue = f"trtbatch.unit.{uuid.uuid4().hex[:8]}"
    a = make_app(Settings.from_env({}), f"{redis_server.url}?db=1")
    try:
        with a.producer_or_acquire() as producer:
            a.send_task(INFER_TASK, args=[{"job_id": "x"}], queue=queue, producer=producer)
        assert store_conn.llen(keys.broker_queue(queue)) == 1
        assert not redis_server.client(db=0).exists(keys.broker_queue(queue))
    finally:
        a.close()
        leaked = redis_server.client(db=0).keys(f"trtbatch:celery:*{queue}")
        if leaked:
            redis_server.client(db=0).delete(*leaked)


def test_socket_database_is_passed_to_kombu() -> None:
    a = make_app(Settings.from_env({}), "unix:///run/redis/redis.sock?db=3")
    assert a.conf.broker_url == "redis+socket:///run/redis/redis.sock?virtual_host=3"


def test_password_reaches_the_broker_over_a_unix_socket() -> None:
    """TRTBATCH_REDIS_PASSWORD with a unix:// URL: kombu must authenticate like redis-py does."""
    password = "p@ss:w/rd"
    server = RedisServer(Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))).start()  # short socket path
    try:
        server.client().config_set("requirepass", password)
        settings = Settings.from_env({"TRTBATCH_REDIS_URL": server.url, "TRTBATCH_REDIS_PASSWORD": password})
        a = make_app(settings)
        try:
            with a.producer_or_acquire() as producer:
                a.send_task(INFER_TASK, args=[{"job_id": "x"}], queue="trtbatch.unit.auth", producer=producer)
        finally:
            a.close()
        assert server.client(password=password).llen(keys.broker_queue("trtbatch.unit.auth")) == 1
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def test_publishing_retries_through_a_redis_restart(app: Celery) -> None:
    policy = app.conf.task_publish_retry_policy
    assert app.conf.task_publish_retry and policy == PUBLISH_RETRY_POLICY
    waits = [min(policy["interval_start"] + i * policy["interval_step"], policy["interval_max"])
             for i in range(policy["max_retries"])]
    assert sum(waits) >= 30  # like the redis-py clients (common/redisconn.py), not Celery's ~0.6 s


def test_a_detached_channel_fails_like_a_lost_connection(redis_server: RedisServer, store_conn: redis.Redis) -> None:
    """After Redis went away, Celery's consumer closes the connection (kombu detaches its channel) and
    kombu still restores the channel's delivered messages through it, and acks tasks that finish
    later. kombu 5.7 raised AttributeError there - the worker exited; now it is a connection error,
    which kombu and Celery handle, and the message stays in the unacked hash for the visibility sweep."""
    from kombu import Consumer, Queue

    queue = f"trtbatch.unit.{uuid.uuid4().hex[:8]}"
    a = make_app(Settings.from_env({}), f"{redis_server.url}?db=1")
    try:
        a.send_task(INFER_TASK, args=[{"job_id": "x"}], queue=queue)
        with a.connection_for_read() as conn:
            channel = conn.default_channel
            got: list = []
            Consumer(channel, queues=[Queue(queue)], accept=["json"], on_message=got.append).consume()
            conn.drain_events(timeout=5)
            assert len(got) == 1 and len(channel.qos._delivered) == 1
            errors = conn.connection_errors
            transport, client = channel.connection, channel.connection.client
            channel._disconnect_pools()  # as the first, failed close of the lost connection left it
            transport.client = None  # detached
            try:
                with pytest.raises(errors):
                    channel.qos.restore_unacked()
                with pytest.raises(errors):
                    got[0].ack()
                channel.connection = None  # detached further, as a late ack found it
                with pytest.raises(errors):
                    channel.qos.ack(got[0].delivery_tag)
            finally:
                channel.connection, transport.client = transport, client
            assert store_conn.hlen(keys.BROKER_UNACKED) == 1 and store_conn.llen(keys.broker_queue(queue)) == 0
    finally:
        a.close()


def test_the_event_loop_never_blocks_in_a_pubsub_read(redis_server: RedisServer, store_conn: redis.Redis) -> None:
    """kombu reads the remote-control pub/sub from the worker's event loop when the socket looks
    readable. With nothing to read (a worker was found in that state after a Redis restart) the read
    blocked forever; it must return within PUBSUB_READ_TIMEOUT_S."""
    import threading
    import time

    from common.celery_app import PUBSUB_READ_TIMEOUT_S

    a = make_app(Settings.from_env({}), f"{redis_server.url}?db=1")
    try:
        with a.connection_for_read() as conn:
            channel = conn.default_channel
            pubsub = channel.subclient
            name = f"trtbatch-unit-{uuid.uuid4().hex[:8]}"
            pubsub.subscribe(name)
            assert pubsub.get_message(timeout=5)["type"] == "subscribe"
            outcome: list = []
            reader = threading.Thread(target=lambda: outcome.append(channel._receive_one(pubsub)), daemon=True)
            started = time.monotonic()
            reader.start()
            reader.join(PUBSUB_READ_TIMEOUT_S + 5)
            assert outcome == [None], "the read blocked"
            assert time.monotonic() - started < PUBSUB_READ_TIMEOUT_S + 2
            store_conn.publish(f"{keys.BROKER_PREFIX}{name}", "x")  # and messages still come through
            assert pubsub.get_message(timeout=5)["data"] == b"x"
    finally:
        a.close()


def test_a_sweeper_killed_holding_the_restore_mutex_stalls_redelivery_briefly(
        redis_server: RedisServer, store_conn: redis.Redis) -> None:
    """A worker SIGKILLed inside kombu's restore sweep leaves the sweep mutex behind; no worker
    sweeps until it expires. A dead worker's batch must still be back well within the 15 s bound:
    visibility + restore interval + mutex expiry. Real Redis, real kombu sweep."""
    import time

    from kombu import Consumer, Queue

    from common.celery_app import RESTORE_MUTEX_EXPIRE_S

    settings = Settings.from_env({"TRTBATCH_VISIBILITY_TIMEOUT_S": "2"})
    queue = f"trtbatch.unit.{uuid.uuid4().hex[:8]}"
    a = make_app(settings, f"{redis_server.url}?db=1")
    try:
        a.send_task(INFER_TASK, args=[{"job_id": "x"}], queue=queue)
        with a.connection_for_read() as conn:  # the worker that dies holding the batch
            got: list = []
            Consumer(conn.default_channel, queues=[Queue(queue)], accept=["json"], on_message=got.append).consume()
            conn.drain_events(timeout=5)
            assert len(got) == 1 and store_conn.llen(keys.broker_queue(queue)) == 0
            conn.default_channel.qos._delivered.clear()  # it dies: nothing of it restores anything
        # ... and it died inside a sweep, holding the mutex (kombu's lock: SET NX with the expiry)
        assert store_conn.lock(keys.BROKER_PREFIX + "unacked_mutex", timeout=RESTORE_MUTEX_EXPIRE_S).acquire(
            blocking=False)
        started = time.monotonic()
        with a.connection_for_read() as survivor:
            qos = survivor.default_channel.qos
            while not store_conn.llen(keys.broker_queue(queue)) and time.monotonic() - started < 30:
                qos.restore_visible(num=10, interval=1)  # the surviving worker's sweep, every tick
                time.sleep(0.1)
        back = time.monotonic() - started
        assert store_conn.llen(keys.broker_queue(queue)) == 1 and store_conn.hlen(keys.BROKER_UNACKED) == 0
        assert back <= max(settings.visibility_timeout_s, RESTORE_MUTEX_EXPIRE_S) + 1.0, back
        defaults = Settings.from_env({})  # keep a 2 s margin under the 15 s bound, however it fell
        assert defaults.visibility_timeout_s + defaults.restore_interval_s + RESTORE_MUTEX_EXPIRE_S <= 13
    finally:
        store_conn.delete(keys.BROKER_PREFIX + "unacked_mutex")
        a.close()
