"""A pipeline slot in the test process: real Redis (the store database, flushed per test), a real
Paddle predictor on the digits model, the worker's own code from fetch to write."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common import keys
from common.artifacts import ArtifactStore
from common.config import Settings
from common.schemas import BatchPayload, BatchTask, JobRecord, PayloadItem
from common.spec import NodeInfo
from common.store import JobStore
from tests.conftest import STORE_DB
from tests.helpers import RedisServer
from workers.pipeline.context import SlotContext, WorkerIdentity, make_slot_context

CPU_NODE = NodeInfo(paddle_version="2.6.2", cpu_count=2)


def identity(tmp_path: Path, name: str = "unit@test") -> WorkerIdentity:
    return WorkerIdentity(name=name, device="cpu", gpu_index=None, cpu_threads=1, slots=1, decode_threads=1,
                          capabilities=frozenset(CPU_NODE.capabilities("cpu")), queues=(), node=CPU_NODE,
                          lock_path=str(tmp_path / "device.lock"), shared_device=False)


@pytest.fixture()
def slot(redis_server: RedisServer, store_conn: redis.Redis, session_dirs: dict[str, Path], digits,
         tmp_path: Path) -> Iterator[SlotContext]:
    settings = Settings.from_env({"TRTBATCH_REDIS_URL": f"{redis_server.url}?db={STORE_DB}",
                                  "TRTBATCH_CACHE_DIR": str(session_dirs["cache"])})
    ctx = make_slot_context(settings, identity(tmp_path), 0)
    yield ctx
    ctx.predictors.close()
    ctx.pool.shutdown()
    ctx.conn.close()


@pytest.fixture()
def digits_version(slot: SlotContext, digits) -> str:
    return ArtifactStore(slot.conn).publish_version("digits", digits["repo"] / "digits")


def new_job(store: JobStore, version_id: str, job_id: str = "job1", **fields: object) -> JobRecord:
    record = JobRecord(job_id=job_id, model="digits", version_id=version_id, queue="trtbatch.any.fp32", batch_size=4,
                       top_k=3, **fields)  # type: ignore[arg-type]
    assert store.create_job(record)
    return record


def put_batch(conn: redis.Redis, job: JobRecord, batch_no: int, files: list[Path | bytes], start: int = 0,
              **task_fields: object) -> BatchTask:
    """Store a payload of ``files`` (paths, or raw bytes named blob<i>) and return its task message."""
    items = []
    for i, f in enumerate(files):
        data = f if isinstance(f, bytes) else f.read_bytes()
        items.append(PayloadItem(index=start + i, path=f"blob{i}" if isinstance(f, bytes) else str(f), data=data))
    key = keys.payload(job.job_id, batch_no)
    conn.set(key, BatchPayload(tuple(items)).encode(), ex=600)
    return BatchTask(job_id=job.job_id, batch_no=batch_no, payload_key=key, version_id=job.version_id,
                     model=job.model, precision=job.precision, target=job.target, batch_size=job.batch_size,
                     n_images=len(items), start_index=start, top_k=job.top_k, **task_fields)  # type: ignore[arg-type]
