"""Prometheus metrics of a worker, served by its main process on ``metrics_port`` (0: off).

Pool processes record into prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``,
one folder per worker under ``<state_dir>/metrics/``); the main process aggregates them at scrape
time and adds the depth of the worker's queues. With ``--device gpu:all`` the worker on GPU i
listens on ``metrics_port + i``.

Metric names (label ``worker`` on all):
  trtbatch_images_total{model,precision,outcome}      images written, outcome ok|failed
  trtbatch_batches_total{model,precision,outcome}     batches written, outcome ok|failed|dead
  trtbatch_image_errors_total{code}                   failed images by error code
  trtbatch_batch_seconds{model,precision}             histogram: whole batch, fetch to write
  trtbatch_infer_seconds{model,precision}             histogram: predictor.run only
  trtbatch_predictor_build_seconds{model,backend,precision}  histogram: predictor builds
  trtbatch_queue_depth{queue}                         messages waiting in each queue it serves
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.schemas import ResultRecord
from common.spec import PredictorSpec
from workers.pipeline.context import SlotObserver

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BUILD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


def prepare_dir(state_dir: Path, worker: str) -> Path:
    """A clean multiprocess folder for this worker; must be set before prometheus_client loads."""
    folder = state_dir / "metrics" / worker.replace("/", "_").replace("@", "_at_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


class Metrics:
    """The metric objects, created lazily in each process that records."""

    def __init__(self, worker: str) -> None:
        from prometheus_client import Counter, Histogram

        self.worker = worker
        self.images = Counter("trtbatch_images_total", "Images written", ["worker", "model", "precision", "outcome"])
        self.batches = Counter("trtbatch_batches_total", "Batches written",
                               ["worker", "model", "precision", "outcome"])
        self.errors = Counter("trtbatch_image_errors_total", "Failed images by error code", ["worker", "code"])
        self.batch_seconds = Histogram("trtbatch_batch_seconds", "Whole batch: fetch to write",
                                       ["worker", "model", "precision"], buckets=BATCH_BUCKETS)
        self.infer_seconds = Histogram("trtbatch_infer_seconds", "Predictor run per batch",
                                       ["worker", "model", "precision"], buckets=BATCH_BUCKETS)
        self.build_seconds = Histogram("trtbatch_predictor_build_seconds", "Predictor build time",
                                       ["worker", "model", "backend", "precision"], buckets=BUILD_BUCKETS)

    def batch(self, model: str, precision: str, ok: int, failed: int, codes: Iterable[str], seconds: float,
              infer_seconds: float | None, dead: bool = False) -> None:
        labels = (self.worker, model, precision)
        if ok:
            self.images.labels(*labels, "ok").inc(ok)
        if failed:
            self.images.labels(*labels, "failed").inc(failed)
        for code in codes:
            self.errors.labels(self.worker, code).inc()
        outcome = "dead" if dead else ("failed" if failed and not ok else "ok")
        self.batches.labels(*labels, outcome).inc()
        self.batch_seconds.labels(*labels).observe(seconds)
        if infer_seconds is not None:
            self.infer_seconds.labels(*labels).observe(infer_seconds)

    def build(self, model: str, backend: str, precision: str, seconds: float) -> None:
        self.build_seconds.labels(self.worker, model, backend, precision).observe(seconds)


class MetricsObserver(SlotObserver):
    """What a pipeline slot tells its observer, recorded as Prometheus metrics."""

    def __init__(self, worker: str) -> None:
        self.metrics = Metrics(worker)

    def batch(self, model: str, precision: str, records: list[ResultRecord], seconds: float,
              infer_s: float | None, dead: bool = False) -> None:
        codes = [r.error_code or "error" for r in records if not r.ok]
        self.metrics.batch(model, precision, len(records) - len(codes), len(codes), codes, seconds, infer_s, dead)

    def built(self, model: str, spec: PredictorSpec, seconds: float) -> None:
        self.metrics.build(model, spec.backend, spec.precision, seconds)


@functools.cache
def observer(worker: str) -> MetricsObserver | None:
    """A pool process's metrics observer, or None when metrics are off (no multiprocess folder). One
    per process: thread slots share it (a second set of the same metrics is refused by the registry)."""
    return MetricsObserver(worker) if os.environ.get(MULTIPROC_ENV) else None


class QueueDepthCollector:
    """Scrape-time gauge of the broker lists of the queues this worker serves."""

    def __init__(self, conn: Any, worker: str, queues: Iterable[str]) -> None:
        self.conn, self.worker, self.queues = conn, worker, list(queues)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from common import keys

        family = GaugeMetricFamily("trtbatch_queue_depth", "Messages waiting per queue", labels=["worker", "queue"])
        try:
            pipe = self.conn.pipeline(transaction=False)
            for queue in self.queues:
                pipe.llen(keys.broker_queue(queue))
            for queue, depth in zip(self.queues, pipe.execute(), strict=True):
                family.add_metric([self.worker, queue], depth)
        except Exception:  # a scrape during a Redis outage reports no depth rather than failing
            pass
        yield family


def serve(port: int, conn: Any, worker: str, queues: Iterable[str]) -> None:
    """Start the HTTP endpoint in the worker's main process (aggregating its pool processes)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(QueueDepthCollector(conn, worker, queues))
    start_http_server(port, registry=registry)


def mark_dead(pid: int) -> None:
    """Drop a finished pool process's live-gauge files (prometheus-client's multiprocess contract)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
