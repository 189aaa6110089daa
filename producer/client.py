"""The library the CLI calls: one object holding settings and lazily-opened connections."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import redis

from common import fleet, redisconn
from common.artifacts import ArtifactStore
from common.config import Settings
from common.repo import ModelRepository
from common.store import JobStore


class Client:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()

    @cached_property
    def url(self) -> str:
        return redisconn.resolve_url(self.settings)

    @cached_property
    def conn(self) -> redis.Redis:
        conn = redisconn.client(self.settings, self.url)
        redisconn.ping(conn)
        return conn

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.conn, self.settings.result_ttl_s)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.conn)

    @cached_property
    def repo(self) -> ModelRepository:
        return ModelRepository(self.settings.model_repo)

    @cached_property
    def app(self) -> Any:
        from common.celery_app import make_app

        return make_app(self.settings, self.url)

    def live_workers(self) -> list[fleet.WorkerInfo]:
        return fleet.live_workers(self.conn, self.settings.heartbeat_ttl_s)

    def close(self) -> None:
        if "app" in self.__dict__:
            self.app.close()
        if "conn" in self.__dict__:
            self.conn.close()
