"""Shared fixtures: a real redis-server per session, settings pointing at private folders, the
digits model made once, and one real CPU worker subprocess shared by integration tests.

Every integration test on the session's server starts from a clean key space (``clean_keyspace``):
no job, payload, queued message or orphan record of an earlier test is left. What survives is what
the shared worker owns (its fleet records, kombu's exchange bindings) and the content-addressed
model artifacts (versions, blobs, calibration tables, reports), which module-scoped fixtures such as
test_calibration's PTQ job publish once for several tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common import fleet, keys
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
    from tools.modelmake import make_digits

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
    with running_worker(redis_server.client(), env, name, log, "--queues", "trtbatch.paddle.trt.int8",
                        "--queues", "trtbatch.paddle.trt.fp32", "--queues", "trtbatch.paddle.trt.calib"):
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


#: Key families (``trtbatch:<family>:...``) that survive between integration tests.
KEPT_FAMILIES = frozenset({"workers", "worker", "blob", "version", "model", "calib", "report"})
KOMBU_BINDINGS = f"{keys.BROKER_PREFIX}_kombu"
IDLE_TIMEOUT_S = 60


def _kept(key: bytes) -> bool:
    text = key.decode(errors="replace")
    family = text.split(":")[1] if text.count(":") >= 1 else ""
    return text.startswith(KOMBU_BINDINGS) or family in KEPT_FAMILIES


def _wait_idle(conn: redis.Redis) -> None:
    """Until no slot of a live worker runs a batch (an earlier test's last batch being written)."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if not any(slot.current_batch for w in fleet.live_workers(conn, 10) for slot in w.slots):
            return
        time.sleep(0.05)


def flush_job_state(conn: redis.Redis) -> int:
    """Delete every key but the kept ones; returns how many were deleted."""
    doomed = [k for k in conn.scan_iter(count=1000) if not _kept(k)]
    for i in range(0, len(doomed), 500):
        conn.delete(*doomed[i:i + 500])
    return len(doomed)


@pytest.fixture(autouse=True)
def clean_keyspace(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("integration") is None or "redis_server" not in request.fixturenames:
        yield
        return
    conn = request.getfixturevalue("redis_server").client()
    _wait_idle(conn)
    flush_job_state(conn)
    yield
