"""Worker heartbeats: the fleet record (common/fleet.py) refreshed from the worker's main process.

A daemon thread publishes ``trtbatch:worker:<name>`` every ``heartbeat_interval_s`` with a TTL
of ``heartbeat_ttl_s``, so a worker that dies (or hangs) leaves every listing within that TTL.
On warm shutdown the record says ``draining`` until the last batch is written, then is removed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from common import fleet, redisconn
from workers.engines import gpus
from workers.pipeline import context
from workers.pipeline.context import WorkerIdentity

log = logging.getLogger("trtbatch.heartbeat")
GPU_REFRESH_S = 10.0


def worker_info(ident: WorkerIdentity, started_s: float, metrics_port: int) -> fleet.WorkerInfo:
    node = ident.node
    return fleet.WorkerInfo(
        name=ident.name, host=socket.gethostname(), pid=os.getpid(), device=ident.device_label,
        gpu_index=ident.gpu_index, gpu_name=node.gpu_name, cpu_threads=ident.cpu_threads,
        capabilities=sorted(fleet.capability_label(c) for c in ident.capabilities), queues=list(ident.queues),
        paddle_version=node.paddle_version, ort_version=node.ort_version,
        trt_version=node.trt_version or node.trt_runtime_version, started_s=started_s,
        metrics_port=metrics_port, gpu_selftest=node.gpu_selftest, ort_gpu_selftest=node.ort_gpu_selftest)


class Heartbeat:
    def __init__(self, conn: redis.Redis, info: fleet.WorkerInfo, interval_s: float, ttl_s: int) -> None:
        self.conn, self.info, self.interval_s, self.ttl_s = conn, info, interval_s, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._gpu_checked = 0.0

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        self._refresh_gpu()
        fleet.publish(self.conn, self.info, self.ttl_s)

    def _refresh_gpu(self) -> None:
        if self.info.gpu_index is None or time.monotonic() - self._gpu_checked < GPU_REFRESH_S:
            return
        self._gpu_checked = time.monotonic()
        found = gpus.gpu_memory(self.info.gpu_index)
        if found:
            self.info.gpu_name, self.info.gpu_memory_used_mb, self.info.gpu_memory_total_mb = found

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed (will retry): %s", exc)

    def set_state(self, state: str) -> None:
        self.info.state = state
        try:
            self.beat()
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def stop(self, remove: bool, slots: int) -> None:
        self._stop.set()
        if remove:
            try:
                fleet.remove(self.conn, self.info.name, slots)
            except redis.RedisError as exc:
                log.warning("could not remove worker record: %s", exc)


class HeartbeatStep(bootsteps.StartStopStep):
    """Consumer step: ``ready`` once consuming, ``draining`` when shutdown starts."""

    requires = {"celery.worker.consumer.tasks:Tasks"}
    heartbeat: Heartbeat | None = None

    @classmethod
    def ensure_started(cls, state: str) -> Heartbeat:
        hb = cls.heartbeat
        if hb is None:
            settings, identity = context.configured()
            info = worker_info(identity, time.time(), settings.metrics_port)
            hb = cls.heartbeat = Heartbeat(redisconn.client(settings), info, settings.heartbeat_interval_s,
                                           settings.heartbeat_ttl_s)
            info.state = state
            hb.start()
        else:
            hb.set_state(state)
        return hb

    def start(self, c: Any) -> None:
        self.ensure_started("ready")

    def stop(self, c: Any) -> None:
        if HeartbeatStep.heartbeat is not None:
            HeartbeatStep.heartbeat.set_state("draining")

    def shutdown(self, c: Any) -> None:
        if HeartbeatStep.heartbeat is not None:
            HeartbeatStep.heartbeat.stop(remove=True, slots=context.configured()[1].slots)
            HeartbeatStep.heartbeat = None
