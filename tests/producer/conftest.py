"""Fixtures of the export tests: a real Client on the flushed store database, and the environment
for running the real `trtbatch` command against it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.config import Settings
from producer.client import Client
from tests.conftest import STORE_DB
from tests.helpers import REPO_ROOT, RedisServer


@pytest.fixture()
def store_client(redis_server: RedisServer, store_conn: redis.Redis) -> Iterator[Client]:
    """A real Client on the flushed store database of the session's redis-server."""
    client = Client(Settings.from_env({"TRTBATCH_REDIS_URL": f"{redis_server.url}?db={STORE_DB}"}))
    yield client
    client.close()


@pytest.fixture()
def cli_env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a `trtbatch` subprocess on the same store database, with its own folders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTBATCH_")}
    env.update(TRTBATCH_REDIS_URL=f"{redis_server.url}?db={STORE_DB}", TRTBATCH_STATE_DIR=str(tmp_path / "state"),
               TRTBATCH_CACHE_DIR=str(tmp_path / "cache"), TRTBATCH_MODEL_REPO=str(tmp_path / "models"),
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env
