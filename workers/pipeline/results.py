"""A batch's outcome: one result record per image, written with the worker's own bookkeeping (slot
state, images/s, batch timings) in one round trip. The store's Lua script makes every write
idempotent, so a batch delivered twice still leaves one record per image."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import redis

from common import fleet, keys
from common.errors import DeadLetterError, DecodeError, TrtbatchError
from common.manifest import ModelManifest
from common.schemas import BatchPayload, BatchTask, BatchTimings, PayloadItem, ResultRecord
from common.store import JobStore
from workers.pipeline import postprocess
from workers.pipeline.context import SlotContext, WorkerIdentity


@dataclass
class BatchOutcome:
    ok: int = 0
    failed: int = 0
    skipped: str = ""
    infer_s: float = 0.0
    decode_s: float = 0.0


# -- records ---------------------------------------------------------------------------------------
def base_record(identity: WorkerIdentity, task: BatchTask, item: PayloadItem, engine: str = "",
                backend: str = "", **outcome: Any) -> ResultRecord:
    """``item``'s record; ``outcome``: its top_k, outputs and notes, when it has them."""
    return ResultRecord(index=item.index, path=item.path, ok=True, label=item.label, job_id=task.job_id,
                        batch_no=task.batch_no, model=task.model, version_id=task.version_id,
                        precision=task.precision, engine=engine, backend=backend, worker=identity.name,
                        device=identity.device_label, **outcome)


def failed(rec: ResultRecord, error: TrtbatchError) -> ResultRecord:
    """``rec`` as a failure: the reason is the error's message, the code its class's ``code``."""
    return replace(rec, ok=False, error=str(error), error_code=error.code, top_k=None, outputs=None)


def placeholder_items(task: BatchTask) -> list[PayloadItem]:
    """Items standing in for a payload that is gone: indices are known, paths are not."""
    return [PayloadItem(index=task.start_index + i, path="") for i in range(task.n_images)]


def build_records(identity: WorkerIdentity, task: BatchTask, items: list[PayloadItem],
                  decoded: list[tuple[str, ...] | TrtbatchError], good: list[int], outputs: dict[str, np.ndarray],
                  manifest: ModelManifest, engine: str, backend: str) -> list[ResultRecord]:
    """Records for every item: the predictions of the decoded ones (``good``, in batch order), the
    decode error of the others."""
    posts = postprocess.postprocess(outputs, manifest.postprocess, task.top_k) if good else []
    raw_rows = _raw_rows(outputs, len(good)) if task.include_outputs and good else []
    by_item = {i: n for n, i in enumerate(good)}
    records = []
    for i, item in enumerate(items):
        outcome = decoded[i]
        if i not in by_item or isinstance(outcome, TrtbatchError):
            records.append(failed(base_record(identity, task, item, engine, backend), outcome))  # type: ignore[arg-type]
            continue
        n = by_item[i]
        post = posts[n]
        records.append(base_record(identity, task, item, engine, backend, top_k=post.get("top_k"),
                                   outputs=raw_rows[n] if raw_rows else post.get("outputs"),
                                   notes=list(outcome) or None))
    return records


def _raw_rows(outputs: dict[str, np.ndarray], n: int) -> list[dict[str, Any]]:
    return [{name: arr[i].astype(np.float64).ravel().tolist() for name, arr in outputs.items()}
            for i in range(n)]


# -- writes ----------------------------------------------------------------------------------------
def write_done(ctx: SlotContext, task: BatchTask, records: list[ResultRecord], timings: BatchTimings
               ) -> tuple[int, int]:
    """Write a served batch: records, timings, images/s and the slot's idle state, one round trip."""
    pipe = ctx.conn.pipeline(transaction=False)
    ctx.store.queue_write_batch(pipe, task.job_id, task.batch_no, records, task.payload_key)
    fleet.add_images(pipe, ctx.identity.name, len(records))
    pipe.hset(keys.job_timings(task.job_id), task.batch_no, timings.encode())
    pipe.expire(keys.job_timings(task.job_id), ctx.settings.result_ttl_s)
    ctx.publish_state(pipe, current_batch=None, batches=ctx.state.batches + 1,
                      last_batch_s=round(timings.postprocessed_s - timings.started_s, 4))
    return ctx.store.written(pipe.execute()[0], task.job_id)


def payload_items(conn: redis.Redis, task: BatchTask) -> list[PayloadItem]:
    """The batch's items for failed records; placeholders when the payload is gone or is itself what
    cannot be decoded (a poison payload must still be dead-lettered)."""
    raw = conn.get(task.payload_key)
    try:
        return list(BatchPayload.decode(raw).items) if raw else placeholder_items(task)
    except DecodeError:
        return placeholder_items(task)


def batch_state(error: TrtbatchError) -> str:
    """What the job's batches hash says of a failed batch: ``dead:<reason>`` or ``failed:<code>``."""
    return f"dead:{str(error)[:200]}" if isinstance(error, DeadLetterError) else f"failed:{error.code}"


def failed_records(conn: redis.Redis, identity: WorkerIdentity, task: BatchTask, error: TrtbatchError,
                   items: list[PayloadItem] | None) -> list[ResultRecord]:
    items = payload_items(conn, task) if items is None else items
    return [failed(base_record(identity, task, it), error) for it in items]


def fail_batch(ctx: SlotContext, task: BatchTask, error: TrtbatchError,
               items: list[PayloadItem] | None = None) -> BatchOutcome:
    """Give every image of the batch one failed record naming ``error`` (idempotent)."""
    records = failed_records(ctx.conn, ctx.identity, task, error, items)
    pipe = ctx.conn.pipeline(transaction=False)
    ctx.store.queue_write_batch(pipe, task.job_id, task.batch_no, records, task.payload_key, batch_state(error))
    ctx.publish_state(pipe, current_batch=None)
    new_ok, new_failed = ctx.store.written(pipe.execute()[0], task.job_id)
    ctx.observer.batch(task.model, task.precision, records, 0.0, None, dead=isinstance(error, DeadLetterError))
    return BatchOutcome(ok=new_ok, failed=new_failed)


def fail_batch_from_main(conn: redis.Redis, store: JobStore, identity: WorkerIdentity, task: BatchTask,
                         error: TrtbatchError) -> None:
    """``fail_batch`` from the worker's main process, for a batch whose pool process it had to kill."""
    records = failed_records(conn, identity, task, error, None)
    store.write_batch(task.job_id, task.batch_no, records, task.payload_key, batch_state(error))
