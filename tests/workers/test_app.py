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
from common.config import Settings
from common.errors import ConfigError
from tests.helpers import RedisServer
from workers.app import INFER_TASK, check_serializers, make_app

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
    assert conf.task_default_queue == "trtbatch.any.fp32"
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
