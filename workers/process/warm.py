"""Warm start: build and exercise predictors before the worker takes any batch.

``trtbatch worker --warm digits:fp32 --warm resnet50:fp16:128:onnxruntime`` - each entry is
``MODEL[:PRECISION[:BATCH[:ENGINE]]]``. Every pool process builds those predictors in
``worker_process_init`` (TensorRT engines come from the engine cache when present) and reports
the build and warm-up times in its slot record; the ``WarmGate`` worker step holds the consumer
back until every slot is ready, so no batch waits behind a cold build.

The gate holds every worker, with or without ``--warm``: a pool process is ready only once its
engines are imported (seconds; tens of seconds on a busy machine), and a consumer that starts before
takes messages it cannot run yet - the batches a killed worker left, handed back first, waited in a
restarting worker for its pool (tests/integration/test_faults.py's chaos test, under load).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import bootsteps

from common import catalog, fleet, redisconn
from common.routing import ENGINE_TARGETS, choose
from workers.pipeline import context
from workers.pipeline.context import SlotContext
from workers.pipeline.gpu_decoders import gpu_decoder
from workers.pipeline.predictors import manifest_of, predictor_for_spec

log = logging.getLogger("trtbatch.warm")


@dataclass(frozen=True)
class WarmRequest:
    model: str
    precision: str = "fp32"
    batch_size: int = 0
    engine: str = "any"

    @classmethod
    def parse(cls, text: str) -> WarmRequest:
        parts = text.split(":")
        if not parts[0] or len(parts) > 4:
            raise ValueError(f"--warm {text!r}: expected MODEL[:PRECISION[:BATCH[:ENGINE]]]")
        if len(parts) > 2 and not parts[2].isdigit():
            raise ValueError(f"--warm {text!r}: BATCH must be a positive number")
        engine = parts[3] if len(parts) == 4 else "any"
        if engine not in ENGINE_TARGETS:
            raise ValueError(f"--warm {text!r}: ENGINE must be one of {', '.join(ENGINE_TARGETS)}")
        return cls(parts[0], parts[1] if len(parts) > 1 else "fp32", int(parts[2]) if len(parts) > 2 else 0, engine)


def warm_one(ctx: SlotContext, request: WarmRequest) -> dict[str, Any]:
    engine, backend = choose(request.engine, "any", request.precision, ctx.identity.capabilities)
    resolved = catalog.resolve(ctx.artifacts, request.model, request.precision, backend, engine=engine)
    manifest = manifest_of(ctx, resolved.version_id)
    batch = request.batch_size or min(ctx.settings.default_batch_size, manifest.max_batch_size)
    started = time.perf_counter()
    predictor = predictor_for_spec(ctx, resolved.version_id, manifest, backend,  # type: ignore[arg-type]
                                   request.precision, batch, resolved.int8_source, engine)  # type: ignore[arg-type]
    built = time.perf_counter() - started
    warm_s = predictor.warm((1, batch), manifest.input.chw)
    item = {"model": resolved.name, "version": resolved.version_id, "engine": engine, "backend": backend,
            "precision": request.precision, "batch": batch, "build_s": round(built, 3), "warm_s": round(warm_s, 3)}
    gpu = gpu_decoder(ctx, ctx.preprocessor(manifest), predictor)
    if gpu is not None:  # its first use compiles kernels and starts nvImageCodec: ~1 s the first batch would wait
        try:
            item["gpu_decoder_warm_s"] = round(gpu.warm(), 3)
        except Exception as exc:  # the predictor is warm; batches still try the GPU, image by image
            item["gpu_decoder_error"] = f"{type(exc).__name__}: {exc}"[:500]
            log.error("GPU decoder warm-up for %s failed: %s", request.model, item["gpu_decoder_error"])
            ctx.publish_state(last_error=f"GPU decoder warm-up: {item['gpu_decoder_error']}"[:500])
    return item


def warm_all(ctx: SlotContext, entries: tuple[str, ...]) -> list[dict[str, Any]]:
    report = []
    for entry in entries:
        try:
            item = warm_one(ctx, WarmRequest.parse(entry))
            log.info("warmed %s: build %.2fs, warm-up %.2fs", entry, item["build_s"], item["warm_s"])
        except Exception as exc:  # a failed warm-up is reported, the worker still serves
            item = {"entry": entry, "error": f"{type(exc).__name__}: {exc}"[:500]}
            log.error("warm-up of %s failed: %s", entry, item["error"])
        report.append(item)
        ctx.publish_state(warm=tuple(report))
    return report


class WarmGate(bootsteps.StartStopStep):
    """Worker step (runs after the pool starts, before the consumer): wait for warm slots."""

    requires = {"celery.worker.components:Pool"}
    poll_s = 0.2

    def start(self, w: Any) -> None:
        settings, ident = context.configured()
        from workers.process.heartbeat import HeartbeatStep

        HeartbeatStep.ensure_started(state="warming")
        if ident.thread_slots:  # no pool processes: the slots are built here, in the worker process
            from workers.process.runtime import start_thread_slots

            start_thread_slots()
        conn = redisconn.client(settings)
        deadline = time.monotonic() + settings.task_hard_time_limit_s
        started = time.monotonic()
        while time.monotonic() < deadline:
            states = [fleet.slot_state(conn, ident.name, i) for i in range(ident.slots)]
            if all(s is not None and s.start_id == ident.start_id and s.state == "ready" for s in states):
                log.info("all %d slots warm after %.1fs", ident.slots, time.monotonic() - started)
                return
            time.sleep(self.poll_s)
        log.error("slots not warm after %ss; taking work anyway", settings.task_hard_time_limit_s)
