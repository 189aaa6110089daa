"""Shared fixtures: a real redis-server per session, settings pointing at private folders, the
digits model made once, and one real CPU worker subprocess shared by integration tests."""

from __future__ import annotations

import zlib  # noqa: F401  # before paddle (paddlepaddle 2.6.2 segfaults on first zlib use otherwise)
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.config import Settings
from tests.helpers import RedisServer, running_worker, worker_env

STORE_DB = 1  # unit tests of the stores flush this database; workers use database 0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def store_conn(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A clean Redis database for one test (real server, flushed before and after)."""
    conn = redis.Redis(unix_socket_path=str(redis_server.socket), db=STORE_DB)
    conn.flushdb()
    yield conn
    conn.flushdb()


@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trtbatch")
    dirs = {name: root / name for name in ("models", "cache", "state", "images", "logs")}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.fixture(scope="session")
def base_env(redis_server: RedisServer, session_dirs: dict[str, Path]) -> dict[str, str]:
    return {"TRTBATCH_REDIS_URL": redis_server.url, "TRTBATCH_MODEL_REPO": str(session_dirs["models"]),
            "TRTBATCH_CACHE_DIR": str(session_dirs["cache"]), "TRTBATCH_STATE_DIR": str(session_dirs["state"])}


@pytest.fixture(scope="session")
def settings(base_env: dict[str, str]) -> Settings:
    return Settings.from_env(base_env)


@pytest.fixture(scope="session")
def digits(session_dirs: dict[str, Path]) -> dict[str, Path]:
    """The digits model (trained once per session) and its held-out images with labels.csv."""
    from common.repo import ModelRepository
    from producer.modelmake import make_digits

    images = session_dirs["images"] / "digits"
    result = make_digits(ModelRepository(session_dirs["models"]), "digits", export_dir=images)
    assert result["held_out_accuracy"] >= 0.97
    return {"repo": session_dirs["models"], "images": images, "labels": images / "labels.csv"}


@pytest.fixture(scope="session")
def cpu_worker(redis_server: RedisServer, base_env: dict[str, str], session_dirs: dict[str, Path],
               digits: dict[str, Path]) -> Iterator[str]:
    """One real CPU worker (2 pipeline slots) for the session. It also listens on TensorRT queues so
    tests can check that a node without TensorRT fails such batches with a clear error."""
    name = "itest-cpu@local"
    log = session_dirs["logs"] / "cpu_worker.log"
    env = worker_env(base_env)
    with running_worker(redis_server.client(), env, name, log, "--queues", "trtbatch.trt.int8",
                        "--queues", "trtbatch.trt.fp32"):
        yield name


@pytest.fixture()
def client(settings: Settings):
    from producer.client import Client

    c = Client(settings)
    yield c
    c.close()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path
