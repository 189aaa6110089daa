"""Run one batch: fetch the claim-check payload, decode, infer, postprocess, write results.

Failures are sorted by scope:

* one image cannot be used (``ImageError``) -> that image's record says why, the rest go on;
* the whole batch cannot be served -> ``run_batch`` raises: a ``PermanentError`` (model broken,
  precision unsupported on this node, payload expired, job cancelled, delivered too often) fails
  every image of the batch at once; anything else is retried with backoff and dead-lettered after
  ``task_max_retries`` (the policy is in workers/pipeline/tasks.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common import keys
from common.errors import (
    DeadLetterError,
    ImageError,
    JobCancelledError,
    PayloadMissingError,
    PayloadRaceError,
    WorkerLostError,
)
from common.imaging import Preprocessor
from common.manifest import ModelManifest
from common.schemas import BatchPayload, BatchTask, BatchTimings, PayloadItem, PipelineMode
from workers.engines.base import Predictor
from workers.pipeline.context import SlotContext
from workers.pipeline.decode import decode_all
from workers.pipeline.gpu_decoders import gpu_decoder
from workers.pipeline.predictors import manifest_of, predictor_for
from workers.pipeline.results import BatchOutcome, build_records, write_done

log = logging.getLogger("trtbatch.pipeline")


@dataclass
class Fetched:
    deliveries: int
    state: str | None
    raw: bytes | None
    written: bool
    created_s: float


def fetch(ctx: SlotContext, task: BatchTask) -> Fetched:
    """Count this delivery, read the job state and the payload, mark the slot busy: one round trip."""
    attempts = keys.job_attempts(task.job_id)
    pipe = ctx.conn.pipeline(transaction=False)
    pipe.hincrby(attempts, str(task.batch_no), 1)
    pipe.expire(attempts, ctx.settings.result_ttl_s)
    pipe.hmget(keys.job(task.job_id), "state", "created_s")
    pipe.get(task.payload_key)
    pipe.hexists(keys.job_batches(task.job_id), task.batch_no)
    ctx.publish_state(pipe, current_batch=f"{task.job_id}:{task.batch_no}")
    deliveries, _, (state, created), raw, written, *_ = pipe.execute()
    return Fetched(int(deliveries), state.decode() if state else None, raw, bool(written),
                   float(created or 0))


def last_error(ctx: SlotContext, task: BatchTask) -> str:
    """The last error a delivery of the batch recorded; a delivery that recorded none lost its process
    (Celery puts such a batch back: the redelivery is the retry of a ``WorkerLostError``)."""
    raw = ctx.conn.hget(keys.job_attempts(task.job_id), f"{task.batch_no}:error")
    if raw:
        return raw.decode()
    return f"{WorkerLostError.__name__}: no error recorded (the worker process died)"


def skip(ctx: SlotContext, task: BatchTask, got: Fetched) -> BatchOutcome:
    """A batch already written (re-sent by `submit --resume`, or a duplicate delivery) or of a job
    that is gone: drop the payload it brought back, mark the slot idle."""
    pipe = ctx.conn.pipeline(transaction=False)
    if got.written:
        pipe.delete(task.payload_key)
    else:
        log.warning("job %s is gone; dropping batch %d", task.job_id, task.batch_no)
    ctx.publish_state(pipe, current_batch=None)
    pipe.execute()
    return BatchOutcome(skipped="already written" if got.written else "job gone")


def check_deliverable(ctx: SlotContext, task: BatchTask, got: Fetched) -> list[PayloadItem]:
    """The batch's items, or the error that ends (or delays) it."""
    if got.deliveries > ctx.settings.max_deliveries:
        raise DeadLetterError(f"dead-lettered: delivered {got.deliveries - 1} times without finishing; "
                              f"last error: {last_error(ctx, task)}")
    if got.raw is None:
        age_s = time.time() - got.created_s
        if age_s < ctx.settings.payload_ttl_s:
            raise PayloadRaceError(f"image payload {task.payload_key} is not in Redis, {age_s:.0f} s into a job "
                                   f"whose payloads are kept {ctx.settings.payload_ttl_s} s")
        raise PayloadMissingError("image payload expired or missing (payload_ttl_s)")
    items = list(BatchPayload.decode(got.raw).items)
    if got.state == "cancelled":
        raise JobCancelledError("job cancelled")
    return items


def run_batch(ctx: SlotContext, task: BatchTask) -> BatchOutcome:
    started = time.time()
    got = fetch(ctx, task)
    if got.state is None or got.written:
        return skip(ctx, task, got)
    items = check_deliverable(ctx, task, got)
    manifest = manifest_of(ctx, task.version_id)
    predictor = predictor_for(ctx, task, manifest)
    return infer_items(ctx, task, items, manifest, predictor, [started, time.time()])


def infer_items(ctx: SlotContext, task: BatchTask, items: list[PayloadItem], manifest: ModelManifest,
                predictor: Predictor, stamps: list[float]) -> BatchOutcome:
    """Decode, infer under the device lock, postprocess, write. ``stamps`` (unix s) grows from
    [started, fetched] to the seven steps of ``BatchTimings``."""
    pre = ctx.preprocessor(manifest)
    gpu = gpu_decoder(ctx, pre, predictor)
    mode = ctx.identity.pipeline_mode
    if mode is PipelineMode.PARTITIONED:  # CPU: this slot owns its cores
        got = _decode(ctx, pre, gpu, items, stamps)
        outputs = _infer(predictor, got, stamps)
    elif mode is PipelineMode.OVERLAPPED:
        got = _decode(ctx, pre, gpu, items, stamps)
        with ctx.lock.hold():
            outputs = _infer(predictor, got, stamps)
    else:  # the predictor already uses every core: decoding beside it would only make it straggle
        with ctx.lock.hold():
            got = _decode(ctx, pre, gpu, items, stamps)
            outputs = _infer(predictor, got, stamps)
    records = build_records(ctx.identity, task, items, got.decoded, got.good, outputs, manifest, predictor.spec.engine,
                            predictor.spec.backend)
    h2d = got.h2d_bytes if predictor.spec.device == "gpu" else 0
    timings = BatchTimings(*stamps, time.time(), os.getpid(), mode, h2d, got.gpu_decoded, ctx.slot)  # type: ignore[call-arg]
    new_ok, new_failed = write_done(ctx, task, records, timings)
    ctx.observer.batch(task.model, task.precision, records, time.time() - timings.started_s,
                       timings.infer_end_s - timings.infer_start_s)
    return BatchOutcome(ok=new_ok, failed=new_failed, decode_s=timings.decode_end_s - timings.decode_start_s,
                        infer_s=timings.infer_end_s - timings.infer_start_s)


@dataclass
class Decoded:
    decoded: list[tuple[str, ...] | ImageError]
    good: list[int]
    batch: Any  # numpy array (host) or a device array (GPU decode), None when nothing decoded
    h2d_bytes: int = 0
    gpu_decoded: int = 0


def _decode(ctx: SlotContext, pre: Preprocessor, gpu: Any, items: list[PayloadItem], stamps: list[float]) -> Decoded:
    stamps.append(time.time())
    if gpu is not None:
        def on_cpu(subset: list[PayloadItem]) -> tuple[np.ndarray, list[tuple[str, ...] | ImageError]]:
            return decode_all(ctx.pool, ctx.identity.decode_threads, pre, subset, pre.chw)

        out = gpu.decode(items, on_cpu)
        stamps.append(time.time())
        return Decoded(out.decoded, out.good, out.tensor if out.good else None, out.h2d_bytes, out.on_gpu)
    buf, decoded = decode_all(ctx.pool, ctx.identity.decode_threads, pre, items, pre.chw)
    good = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
    stamps.append(time.time())
    batch = None if not good else (buf if len(good) == len(items) else buf[good])
    return Decoded(decoded, good, batch, batch.nbytes if batch is not None else 0)


def _infer(predictor: Predictor, got: Decoded, stamps: list[float]) -> dict[str, np.ndarray]:
    stamps.append(time.time())
    if got.batch is None:
        outputs: dict[str, np.ndarray] = {}
    elif isinstance(got.batch, np.ndarray):
        outputs = predictor.run(got.batch)
    else:
        outputs = predictor.run_device(got.batch)
    stamps.append(time.time())
    return outputs
