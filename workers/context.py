"""Per-process worker state.

``WorkerIdentity`` is decided in the worker's main process before the pool forks (device, name,
capabilities, queues) and inherited by every child. ``SlotContext`` is built in each child after
the fork (``worker_process_init``): Redis clients, the predictor cache, the decode thread pool,
and the device lock that lets two pipeline slots share one device without running at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from common import fleet, redisconn
from common.artifacts import ArtifactStore
from common.config import Settings
from common.manifest import ModelManifest
from common.store import JobStore
from workers.spec import NodeInfo


@dataclass(frozen=True)
class WorkerIdentity:
    name: str
    device: str  # "cpu" | "gpu"
    gpu_index: int | None
    cpu_threads: int
    slots: int
    decode_threads: int
    capabilities: frozenset[tuple[str, str]]
    queues: tuple[str, ...]
    node: NodeInfo
    lock_path: str
    warm: tuple[str, ...] = ()
    start_id: str = ""
    overlap_decode: bool = True
    predictor_threads: int = 1
    shared_device: bool = True

    @property
    def pipeline_mode(self) -> int:
        """0: slots share the device, decode under its lock; 1: shared, decode overlapped with the
        other slot's batch; 2: CPU cores partitioned, each slot decodes and infers on its own."""
        if not self.shared_device:
            return 2
        return 1 if self.overlap_decode else 0

    @property
    def device_label(self) -> str:
        return "cpu" if self.device == "cpu" else f"gpu:{self.gpu_index}"


IDENTITY_ENV = "_TRTBATCH_WORKER_IDENTITY"  # not TRTBATCH_*: that prefix is reserved for settings


def identity_to_json(ident: WorkerIdentity) -> str:
    data = asdict(ident)
    data["capabilities"] = sorted(list(c) for c in ident.capabilities)
    return json.dumps(data)


def identity_from_json(text: str) -> WorkerIdentity:
    """Rebuild the identity in a pool process started with the ``spawn`` method (a fresh interpreter
    inherits the environment, not the parent's module state)."""
    data = json.loads(text)
    node = data.pop("node")
    node["trt_compile_version"] = tuple(node["trt_compile_version"])
    data["capabilities"] = frozenset(tuple(c) for c in data["capabilities"])
    data["queues"], data["warm"] = tuple(data["queues"]), tuple(data["warm"])
    return WorkerIdentity(node=NodeInfo(**node), **data)


class DeviceLock:
    """An flock shared by the pipeline slots of one worker: one predictor runs at a time, so a
    slot decodes batch k+1 while another runs batch k. Released by the kernel if a slot dies."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.wait_s = 0.0
        self.held_s = 0.0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        asked = time.perf_counter()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        got = time.perf_counter()
        self.wait_s += got - asked
        try:
            yield
        finally:
            self.held_s += time.perf_counter() - got
            fcntl.flock(self._fd, fcntl.LOCK_UN)


@dataclass
class SlotContext:
    settings: Settings
    identity: WorkerIdentity
    slot: int
    conn: redis.Redis
    store: JobStore
    artifacts: ArtifactStore
    lock: DeviceLock
    pool: ThreadPoolExecutor
    predictors: Any  # workers.predictors.PredictorCache (imported lazily: it imports paddle)
    manifests: dict[str, ModelManifest] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir

    def engine_dir(self, cache_name: str) -> Path:
        return self.cache_dir / "engines" / cache_name

    def publish_state(self, pipe: Any = None, **changes: Any) -> None:
        """Update this slot's fleet record; queued on ``pipe`` if given, else sent now."""
        self.state.update(changes)
        self.state["predictors"] = self.predictors.loaded()
        self.state["pid"] = os.getpid()
        self.state["updated_s"] = time.time()
        target = pipe if pipe is not None else self.conn.pipeline(transaction=False)
        fleet.add_slot_state(target, self.identity.name, self.slot, self.state, self.settings.heartbeat_ttl_s * 6)
        if pipe is None:
            target.execute()


def make_slot_context(settings: Settings, identity: WorkerIdentity, slot: int) -> SlotContext:
    from workers.predictors import PredictorCache

    conn = redisconn.client(settings)
    threads = identity.decode_threads or max(1, os.cpu_count() or 1)
    return SlotContext(settings=settings, identity=identity, slot=slot, conn=conn,
                       store=JobStore(conn, settings.result_ttl_s), artifacts=ArtifactStore(conn),
                       lock=DeviceLock(identity.lock_path),
                       pool=ThreadPoolExecutor(threads, thread_name_prefix=f"decode{slot}"),
                       predictors=PredictorCache())
