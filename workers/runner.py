"""Run one batch: fetch the claim-check payload, decode, infer, postprocess, write results.

Failures are sorted by scope:

* one image cannot be used (``ImageError``) -> that image's record says why, the rest go on;
* the whole batch cannot be served (``PermanentError``: model broken, precision unsupported on
  this node, payload expired) -> every image of the batch fails at once with that reason;
* anything else propagates to the task, which retries with backoff and dead-letters the batch
  after ``task_max_retries`` (workers/tasks.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace

import numpy as np

from common import fleet, keys
from common.errors import DecodeError, ImageError, PermanentError
from common.imaging import Preprocessor
from common.manifest import ModelManifest
from common.routing import INT8_TRT_CALIB, choose_backend
from common.schemas import BatchPayload, BatchTask, PayloadItem, ResultRecord
from workers import metrics, postprocess
from workers.context import SlotContext
from workers.spec import PredictorSpec, build_spec

log = logging.getLogger("trtbatch.runner")


@dataclass
class BatchOutcome:
    ok: int = 0
    failed: int = 0
    skipped: str = ""
    infer_s: float = 0.0
    decode_s: float = 0.0


def base_record(ctx: SlotContext, task: BatchTask, item: PayloadItem, backend: str = "") -> ResultRecord:
    return ResultRecord(index=item.index, path=item.path, ok=True, label=item.label, job_id=task.job_id,
                        batch_no=task.batch_no, model=task.model, version_id=task.version_id,
                        precision=task.precision, backend=backend, worker=ctx.identity.name,
                        device=ctx.identity.device_label)


def failed(rec: ResultRecord, exc: Exception | str, code: str | None = None) -> ResultRecord:
    reason = str(exc)
    code = code or getattr(exc, "code", "error")
    return replace(rec, ok=False, error=reason, error_code=code, top_k=None, outputs=None)


def placeholder_items(task: BatchTask) -> list[PayloadItem]:
    """Items standing in for a payload that is gone: indices are known, paths are not."""
    return [PayloadItem(index=task.start_index + i, path="") for i in range(task.n_images)]


def payload_items(ctx: SlotContext, task: BatchTask) -> list[PayloadItem]:
    """The batch's items for failed records; placeholders when the payload is gone or is itself what
    cannot be decoded (a poison payload must still be dead-lettered)."""
    raw = ctx.conn.get(task.payload_key)
    try:
        return list(BatchPayload.decode(raw).items) if raw else placeholder_items(task)
    except DecodeError:
        return placeholder_items(task)


def fail_batch(ctx: SlotContext, task: BatchTask, reason: Exception | str, code: str,
               items: list[PayloadItem] | None = None, dead: bool = False) -> BatchOutcome:
    """Give every image of the batch one failed record (idempotent)."""
    if items is None:
        items = payload_items(ctx, task)
    records = [failed(base_record(ctx, task, it), reason, code) for it in items]
    state = f"dead:{str(reason)[:200]}" if dead else f"failed:{code}"
    slot = isinstance(ctx, SlotContext)  # else the worker's main process, for a child it lost
    new_ok, new_failed = ctx.store.write_batch(task.job_id, task.batch_no, records, task.payload_key, state,
                                               extra=_idle(ctx) if slot else None)
    if slot:
        record_metrics(ctx, task, records, 0.0, None, dead)
    return BatchOutcome(ok=new_ok, failed=new_failed)


def _idle(ctx: SlotContext):
    """Queues "this slot runs no batch now" on a pipeline (the fleet view must not show a finished batch)."""
    return lambda pipe: ctx.publish_state(pipe, current_batch=None)


def load_manifest(ctx: SlotContext, version_id: str) -> tuple[ModelManifest, object]:
    model_dir = ctx.artifacts.materialize(version_id, ctx.cache_dir)
    manifest = ctx.manifests.get(version_id)
    if manifest is None:
        manifest = ModelManifest.load(model_dir)
        ctx.manifests[version_id] = manifest
    return manifest, model_dir


def predictor_for(ctx: SlotContext, task: BatchTask, manifest: ModelManifest, model_dir):
    try:
        backend = choose_backend(task.target, task.precision, ctx.identity.capabilities)
    except PermanentError:
        if task.target == "any":
            raise
        backend = task.target  # let build_spec say exactly what this node lacks
    return predictor_for_spec(ctx, task.version_id, manifest, model_dir, backend, task.precision,
                              min(task.batch_size, manifest.max_batch_size), task.int8_source)


def predictor_for_spec(ctx: SlotContext, version_id: str, manifest: ModelManifest, model_dir, backend: str,
                       precision: str, batch_size: int, int8_source: str | None):
    spec = build_spec(manifest, version_id, ctx.identity.node, ctx.identity.device, backend, precision,
                      batch_size, int8_source, cpu_threads=ctx.identity.predictor_threads,
                      gpu_memory_pool_mb=ctx.settings.gpu_memory_pool_mb)
    opt_dir = ctx.engine_dir(spec.engine_cache_name())
    if spec.int8_source == INT8_TRT_CALIB:
        install_calibration(ctx, spec, opt_dir)
    return ctx.predictors.get(spec, model_dir, opt_dir, on_build=lambda s: _built(ctx, manifest, spec, s))


def _built(ctx: SlotContext, manifest: ModelManifest, spec: PredictorSpec, seconds: float) -> None:
    m = metrics.get(ctx.identity.name)
    if m is not None:
        m.build(manifest.name, spec.backend, spec.precision, seconds)


def install_calibration(ctx: SlotContext, spec: PredictorSpec, opt_dir) -> None:
    from workers.calibration import install_tables

    install_tables(ctx.artifacts, spec, opt_dir)


def decode_all(ctx: SlotContext, pre: Preprocessor, items: list[PayloadItem], chw: tuple[int, int, int]
               ) -> tuple[np.ndarray, list[tuple[str, ...] | Exception]]:
    """Decode every item in the thread pool into one batch buffer; per-item notes or the error."""
    buf = np.empty((len(items), *chw), np.float32)

    def one(i: int) -> tuple[str, ...] | Exception:
        item = items[i]
        if item.error:
            return ImageError(item.error)
        try:
            return pre.into(item.data, buf[i])
        except ImageError as exc:
            return exc
        except Exception as exc:  # a decoder bug must not take the batch down
            return ImageError(f"cannot decode image: {type(exc).__name__}: {exc}")

    if ctx.identity.decode_threads <= 1:  # handing each image to one pool thread costs ~25 %
        return buf, [one(i) for i in range(len(items))]
    return buf, list(ctx.pool.map(one, range(len(items))))


@dataclass
class Fetched:
    deliveries: int
    state: str | None
    raw: bytes | None
    written: bool


def fetch(ctx: SlotContext, task: BatchTask) -> Fetched:
    """Count this delivery, read the job state and the payload, mark the slot busy: one round trip."""
    attempts = keys.job_attempts(task.job_id)
    pipe = ctx.conn.pipeline(transaction=False)
    pipe.hincrby(attempts, str(task.batch_no), 1)
    pipe.expire(attempts, ctx.settings.result_ttl_s)
    pipe.hget(keys.job(task.job_id), "state")
    pipe.get(task.payload_key)
    pipe.hexists(keys.job_batches(task.job_id), task.batch_no)
    ctx.publish_state(pipe, current_batch=f"{task.job_id}:{task.batch_no}")
    deliveries, _, state, raw, written, *_ = pipe.execute()
    return Fetched(int(deliveries), state.decode() if state else None, raw, bool(written))


def last_error(ctx: SlotContext, task: BatchTask) -> str:
    raw = ctx.conn.hget(keys.job_attempts(task.job_id), f"{task.batch_no}:error")
    return raw.decode() if raw else "no error recorded (the worker process died)"


def run_batch(ctx: SlotContext, task: BatchTask) -> BatchOutcome:
    started = time.time()
    got = fetch(ctx, task)
    if got.state is None or got.written:
        pipe = ctx.conn.pipeline(transaction=False)
        if got.written:  # a duplicate (e.g. re-sent by `submit --resume`): drop the payload it brought back
            pipe.delete(task.payload_key)
        else:
            log.warning("job %s is gone; dropping batch %d", task.job_id, task.batch_no)
        _idle(ctx)(pipe)
        pipe.execute()
        return BatchOutcome(skipped="already written" if got.written else "job gone")
    if got.deliveries > ctx.settings.max_deliveries:
        reason = (f"dead-lettered: delivered {got.deliveries - 1} times without finishing; "
                  f"last error: {last_error(ctx, task)}")
        return fail_batch(ctx, task, reason, "dead_letter", dead=True)
    if got.raw is None:
        return fail_batch(ctx, task, "image payload expired or missing (payload_ttl_s)", "payload_missing",
                          placeholder_items(task))
    items = list(BatchPayload.decode(got.raw).items)
    if got.state == "cancelled":
        return fail_batch(ctx, task, "job cancelled", "cancelled", items)
    try:
        manifest, model_dir = load_manifest(ctx, task.version_id)
        predictor = predictor_for(ctx, task, manifest, model_dir)
    except PermanentError as exc:
        return fail_batch(ctx, task, exc, exc.code, items)
    return infer_items(ctx, task, items, manifest, predictor, [started, time.time()])


def infer_items(ctx: SlotContext, task: BatchTask, items: list[PayloadItem], manifest: ModelManifest,
                predictor, stamps: list[float]) -> BatchOutcome:
    """Decode, infer under the device lock, postprocess, write. ``stamps`` (unix s) grows to
    [started, fetched, decode start, decode end, infer start, infer end, postprocessed] + [pid, mode]."""
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, ctx.settings.max_image_pixels,
                       ctx.settings.strict_image_modes)
    mode = ctx.identity.pipeline_mode
    if mode == 2:  # CPU: this slot owns its cores
        decoded, good, batch = _decode(ctx, pre, items, manifest, stamps)
        outputs = _infer(predictor, batch, stamps)
    elif mode == 1:
        decoded, good, batch = _decode(ctx, pre, items, manifest, stamps)
        with ctx.lock.hold():
            outputs = _infer(predictor, batch, stamps)
    else:  # the predictor already uses every core: decoding beside it would only make it straggle
        with ctx.lock.hold():
            decoded, good, batch = _decode(ctx, pre, items, manifest, stamps)
            outputs = _infer(predictor, batch, stamps)
    records = build_records(ctx, task, items, decoded, good, outputs, manifest, predictor.spec.backend)
    stamps += [time.time(), os.getpid(), mode]

    def extra(pipe) -> None:
        fleet.add_images(pipe, ctx.identity.name, len(items))
        pipe.hset(keys.job_timings(task.job_id), task.batch_no, json.dumps(stamps))
        pipe.expire(keys.job_timings(task.job_id), ctx.settings.result_ttl_s)
        ctx.publish_state(pipe, current_batch=None, batches=ctx.state.get("batches", 0) + 1,
                          last_batch_s=round(time.time() - stamps[0], 4))

    new_ok, new_failed = ctx.store.write_batch(task.job_id, task.batch_no, records, task.payload_key, extra=extra)
    record_metrics(ctx, task, records, time.time() - stamps[0], stamps[5] - stamps[4])
    return BatchOutcome(ok=new_ok, failed=new_failed, decode_s=stamps[3] - stamps[2], infer_s=stamps[5] - stamps[4])


def record_metrics(ctx: SlotContext, task: BatchTask, records: list[ResultRecord], seconds: float,
                   infer_s: float | None, dead: bool = False) -> None:
    m = metrics.get(ctx.identity.name)
    if m is None:
        return
    failed = [r.error_code or "error" for r in records if not r.ok]
    m.batch(task.model, task.precision, len(records) - len(failed), len(failed), failed, seconds, infer_s, dead)


def _decode(ctx: SlotContext, pre: Preprocessor, items: list[PayloadItem], manifest: ModelManifest,
            stamps: list[float]) -> tuple[list, list[int], np.ndarray | None]:
    stamps.append(time.time())
    buf, decoded = decode_all(ctx, pre, items, manifest.input.chw)
    good = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
    stamps.append(time.time())
    batch = None if not good else (buf if len(good) == len(items) else buf[good])
    return decoded, good, batch


def _infer(predictor, batch: np.ndarray | None, stamps: list[float]) -> dict[str, np.ndarray]:
    stamps.append(time.time())
    outputs = predictor.run(batch) if batch is not None else {}
    stamps.append(time.time())
    return outputs


def build_records(ctx: SlotContext, task: BatchTask, items: list[PayloadItem], decoded: list,
                  good: list[int], outputs: dict[str, np.ndarray], manifest: ModelManifest,
                  backend: str) -> list[ResultRecord]:
    posts = postprocess.postprocess(outputs, manifest.postprocess, task.top_k) if good else []
    raw_rows = _raw_rows(outputs, len(good)) if task.include_outputs and good else []
    by_item = {i: n for n, i in enumerate(good)}
    records = []
    for i, item in enumerate(items):
        rec = base_record(ctx, task, item, backend)
        if i not in by_item:
            records.append(failed(rec, decoded[i]))
            continue
        n = by_item[i]
        post = posts[n]
        rec = replace(rec, top_k=post.get("top_k"), outputs=post.get("outputs"),
                      notes=list(decoded[i]) or None)
        if raw_rows:
            rec = replace(rec, outputs=raw_rows[n])
        records.append(rec)
    return records


def _raw_rows(outputs: dict[str, np.ndarray], n: int) -> list[dict[str, list]]:
    return [{name: arr[i].astype(np.float64).ravel().tolist() for name, arr in outputs.items()}
            for i in range(n)]
