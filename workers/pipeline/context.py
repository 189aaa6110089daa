"""What a pipeline slot works with.

``WorkerIdentity`` is decided in the worker's main process before the pool starts (device, name,
capabilities, queues, how slots share the device) and reaches every pool process - inherited on
fork, through the environment on spawn. ``SlotContext`` is built in each pool process after it
starts (workers/process/runtime.py): Redis clients, the predictor cache, the decode thread pool,
the device lock that lets slots share one device without running at once, and an observer that
the process room plugs metrics into. Tasks find it with ``current()``.

With thread slots (``slot_pool = threads``: every slot a thread of one process, so the slots of a
GPU share one CUDA context and a pool of JPEG decoders), the worker builds one context per slot before it
consumes, and each pool thread takes one for good on its first task.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from common import fleet, redisconn
from common.artifacts import ArtifactStore
from common.config import Settings
from common.errors import DecodeError
from common.imaging import Preprocessor
from common.manifest import ModelManifest
from common.node import NodeInfo
from common.schemas import SCHEMA_VERSION, Device, PipelineMode, ResultRecord, SlotState
from common.spec import PredictorSpec
from common.store import JobStore

IDENTITY_ENV = "_TRTBATCH_WORKER_IDENTITY"  # not TRTBATCH_*: that prefix is reserved for settings


@dataclass(frozen=True)
class WorkerIdentity:
    name: str
    device: Device
    gpu_index: int | None
    cpu_threads: int
    slots: int
    decode_threads: int
    capabilities: frozenset[tuple[str, str, str]]  # (engine, backend, precision)
    queues: tuple[str, ...]
    node: NodeInfo
    lock_path: str
    warm: tuple[str, ...] = ()
    start_id: str = ""
    overlap_decode: bool = True
    predictor_threads: int = 1
    shared_device: bool = True
    #: decode JPEGs on the GPU (workers/pipeline/gpu_decode.py) for engines that take device batches
    gpu_decode: bool = False
    #: slots are threads of the worker process (Celery's threads pool), not pool processes
    thread_slots: bool = False
    #: thread slots share this many GPU decoders per process (settings.gpu_decoders, at most one per
    #: slot); 0: each slot has its own (process slots)
    gpu_decoder_pool: int = 0
    schema: int = SCHEMA_VERSION

    @property
    def pipeline_mode(self) -> PipelineMode:
        if not self.shared_device:
            return PipelineMode.PARTITIONED
        return PipelineMode.OVERLAPPED if self.overlap_decode else PipelineMode.DECODE_UNDER_LOCK

    @property
    def device_label(self) -> str:
        return "cpu" if self.device == "cpu" else f"gpu:{self.gpu_index}"

    def encode(self) -> str:
        data = asdict(self)
        data["capabilities"] = sorted(list(c) for c in self.capabilities)
        return json.dumps(data)

    @classmethod
    def decode(cls, text: str) -> WorkerIdentity:
        """Rebuild the identity in a pool process started with the ``spawn`` method (a fresh
        interpreter inherits the environment, not the parent's module state)."""
        try:
            data = json.loads(text)
            if data.get("schema") != SCHEMA_VERSION:
                raise DecodeError(f"WorkerIdentity: schema {data.get('schema')!r} is not {SCHEMA_VERSION}")
            node = NodeInfo.from_dict(data.pop("node"))
            data["capabilities"] = frozenset(tuple(c) for c in data["capabilities"])
            data["queues"], data["warm"] = tuple(data["queues"]), tuple(data["warm"])
            return cls(node=node, **data)
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeError(f"WorkerIdentity: {exc}") from exc


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


class SlotObserver:
    """Told about every batch and predictor build; records nothing. The process room passes a
    subclass that feeds Prometheus (workers/process/metrics.py) when metrics are on."""

    def batch(self, model: str, precision: str, records: list[ResultRecord], seconds: float,
              infer_s: float | None, dead: bool = False) -> None:
        """One batch was written (``dead``: dead-lettered)."""

    def built(self, model: str, spec: PredictorSpec, seconds: float) -> None:
        """A predictor was built."""


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
    predictors: Any  # workers.engines.cache.PredictorCache
    observer: SlotObserver = field(default_factory=SlotObserver)
    manifests: dict[str, ModelManifest] = field(default_factory=dict)
    #: (version, engine, variant) -> the version that engine loads (workers/pipeline/predictors.py)
    artifact_ids: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: process slots: preprocessing (a manifest's table) -> its GPU decoders, or False where they could
    #: not start (workers/pipeline/gpu_decoders.py; thread slots share a process-wide cache)
    gpu_decoders: dict[Any, Any] = field(default_factory=dict)
    state: SlotState = field(default_factory=SlotState)
    #: (monotonic start, a BatchTask or the id of a whole job) of what this slot runs now (the thread
    #: slots' watchdog reads it)
    running: tuple[float, Any] | None = None

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir

    def engine_dir(self, cache_name: str) -> Path:
        return self.cache_dir / "engines" / cache_name

    def preprocessor(self, manifest: ModelManifest) -> Preprocessor:
        """The model's preprocessing under this worker's image limits (the GPU decoders are cached by it)."""
        return Preprocessor(manifest.preprocess, manifest.input.chw, self.settings.max_image_pixels,
                            self.settings.strict_image_modes)

    def publish_state(self, pipe: Any = None, **changes: Any) -> None:
        """Update this slot's fleet record; queued on ``pipe`` if given, else sent now."""
        self.state = replace(self.state, **changes, predictors=tuple(self.predictors.loaded()), pid=os.getpid(),
                             updated_s=time.time())
        target = pipe if pipe is not None else self.conn.pipeline(transaction=False)
        fleet.add_slot_state(target, self.identity.name, self.slot, self.state, self.settings.heartbeat_ttl_s * 6)
        if pipe is None:
            target.execute()


#: A slot reads its batch's payload (MBs) in reads of up to this much, not redis-py's 64 KB: each read
#: gives up the GIL, and with thread slots getting it back means waiting for the others.
PAYLOAD_READ_BYTES = 1 << 20


def make_slot_context(settings: Settings, identity: WorkerIdentity, slot: int,
                      observer: SlotObserver | None = None) -> SlotContext:
    from workers.engines.cache import PredictorCache

    conn = redisconn.client(settings, socket_read_size=PAYLOAD_READ_BYTES)
    threads = identity.decode_threads or max(1, os.cpu_count() or 1)
    return SlotContext(settings=settings, identity=identity, slot=slot, conn=conn,
                       store=JobStore(conn, settings.result_ttl_s), artifacts=ArtifactStore(conn),
                       lock=DeviceLock(identity.lock_path),
                       pool=ThreadPoolExecutor(threads, thread_name_prefix=f"decode{slot}"),
                       predictors=PredictorCache(), observer=observer or SlotObserver())


# -- the process's own settings, identity and slot context ----------------------------------------
_CONFIGURED: dict[str, Any] = {}


def configure(settings: Settings, identity: WorkerIdentity) -> None:
    """Set by the worker's main process before the pool starts (and again in a spawned pool process)."""
    _CONFIGURED.update(settings=settings, identity=identity)


def configured() -> tuple[Settings, WorkerIdentity]:
    if "identity" not in _CONFIGURED:
        raise RuntimeError("worker runtime is not configured")
    return _CONFIGURED["settings"], _CONFIGURED["identity"]


_THREAD = threading.local()
_FREE: queue.SimpleQueue[SlotContext] = queue.SimpleQueue()  # thread slots not yet taken by a pool thread


def install(ctx: SlotContext) -> None:
    """The slot context of this pool process."""
    _CONFIGURED["ctx"] = ctx


def offer(ctx: SlotContext) -> None:
    """A thread slot's context, for the next pool thread that has none."""
    _FREE.put(ctx)


def current() -> SlotContext:
    """This pool process's slot context - or, with thread slots, this pool thread's."""
    ctx = getattr(_THREAD, "ctx", None) or _CONFIGURED.get("ctx")
    if ctx is not None:
        return ctx
    if "identity" in _CONFIGURED and _CONFIGURED["identity"].thread_slots:
        try:
            _THREAD.ctx = _FREE.get_nowait()
            return _THREAD.ctx
        except queue.Empty:
            pass
    raise RuntimeError("no slot context: this process is not a worker pool process")
