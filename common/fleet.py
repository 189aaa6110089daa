"""The fleet registry: live workers, what they serve and what they are doing.

Each worker's main process refreshes ``trtbatch:worker:<name>`` (a hash with a TTL of
``heartbeat_ttl_s``) and its score in ``trtbatch:workers`` every ``heartbeat_interval_s``. Each
pipeline slot (a Celery child process holding predictors) writes ``...:slot:<n>``. A worker that
stops heartbeating drops out of every listing after ``heartbeat_ttl_s`` seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from common import keys, routing
from common.schemas import SlotState

RATE_WINDOW_S = 60


@dataclass
class WorkerInfo:
    name: str
    host: str = ""
    pid: int = 0
    device: str = "cpu"
    gpu_index: int | None = None
    gpu_name: str = ""
    gpu_memory_used_mb: int | None = None
    gpu_memory_total_mb: int | None = None
    cpu_threads: int = 0
    capabilities: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    paddle_version: str = ""
    ort_version: str = ""
    trt_version: str = ""
    state: str = "starting"
    started_s: float = 0.0
    last_seen_s: float = 0.0
    metrics_port: int = 0
    gpu_selftest: str = ""
    ort_gpu_selftest: str = ""
    slots: list[SlotState] = field(default_factory=list)
    images_per_s: float = 0.0

    def caps(self) -> set[tuple[str, str, str]]:
        """The capabilities as (engine, backend, precision); stored as "engine:backend/precision"."""
        out = set()
        for c in self.capabilities:
            engine, rest = c.split(":", 1)
            backend, precision = rest.split("/", 1)
            out.add((engine, backend, precision))
        return out

    def serves(self, queue: str) -> bool:
        return queue in self.queues

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slots"] = [s.as_dict() for s in self.slots]
        return data

    def to_hash(self) -> dict[str, str]:
        data = asdict(self)
        data.pop("slots")
        data.pop("images_per_s")
        return {k: json.dumps(v) for k, v in data.items()}

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> WorkerInfo:
        data = {k.decode(): json.loads(v) for k, v in raw.items()}
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def publish(conn: redis.Redis, info: WorkerInfo, ttl_s: int) -> None:
    now = time.time()
    info.last_seen_s = now
    pipe = conn.pipeline(transaction=False)
    pipe.hset(keys.worker(info.name), mapping=info.to_hash())
    pipe.expire(keys.worker(info.name), ttl_s)
    pipe.zadd(keys.WORKERS, {info.name: now})
    pipe.zremrangebyscore(keys.WORKERS, "-inf", now - ttl_s)
    pipe.execute()


def add_slot_state(pipe: Any, worker: str, slot: int, state: SlotState, ttl_s: int) -> None:
    """Queue the update of one pipeline slot's record on ``pipe`` (the caller executes it)."""
    key = keys.worker_slot(worker, slot)
    pipe.hset(key, mapping=state.encode())
    pipe.expire(key, ttl_s)


def slot_state(conn: redis.Redis, worker: str, slot: int) -> SlotState | None:
    raw = conn.hgetall(keys.worker_slot(worker, slot))
    return SlotState.decode(raw) if raw else None


def add_images(pipe: Any, worker: str, n: int) -> None:
    """Queue a count of images done, for the last-minute rate (one small ZSET entry per batch)."""
    now = time.time()
    key = keys.worker_rate(worker)
    pipe.zadd(key, {f"{now:.6f}:{n}": now})
    pipe.zremrangebyscore(key, "-inf", now - RATE_WINDOW_S)
    pipe.expire(key, RATE_WINDOW_S * 2)


def remove(conn: redis.Redis, name: str, slots: int = 0) -> None:
    conn.delete(keys.worker(name), keys.worker_rate(name),
                *[keys.worker_slot(name, i) for i in range(slots)])
    conn.zrem(keys.WORKERS, name)


def live_workers(conn: redis.Redis, ttl_s: int, max_slots: int = 16) -> list[WorkerInfo]:
    now = time.time()
    names = [n.decode() for n in conn.zrangebyscore(keys.WORKERS, now - ttl_s, "+inf")]
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
        pipe.zrangebyscore(keys.worker_rate(name), now - RATE_WINDOW_S, "+inf")
        for slot in range(max_slots):
            pipe.hgetall(keys.worker_slot(name, slot))
    replies = pipe.execute()
    out = []
    step = 2 + max_slots
    for i, _name in enumerate(names):
        raw, rate, *slots = replies[i * step:(i + 1) * step]
        if not raw:
            continue
        info = WorkerInfo.from_hash(raw)
        info.slots = [SlotState.decode(s) for s in slots if s]
        done = sum(int(m.decode().rsplit(":", 1)[1]) for m in rate)
        info.images_per_s = round(done / RATE_WINDOW_S, 2)
        out.append(info)
    return out


def servers_of(workers: list[WorkerInfo], queue: str) -> list[WorkerInfo]:
    return [w for w in workers if w.serves(queue) and w.state != "draining"]


def capability_label(cap: tuple[str, str, str]) -> str:
    return f"{cap[0]}:{cap[1]}/{cap[2]}"


_NEEDS = {
    ("paddle", "trt"): "a GPU worker with Paddle-TensorRT (paddlepaddle-gpu built with TensorRT, libnvinfer present)",
    ("paddle", "gpu"): "a GPU worker whose paddlepaddle-gpu passes the GPU self-test",
    ("onnxruntime", "trt"): "a GPU worker with onnxruntime-gpu and TensorRT 10 (libnvinfer.so.10)",
    ("onnxruntime", "gpu"): "a GPU worker with onnxruntime-gpu (CUDA EP)",
    ("onnxruntime", "cpu"): "a CPU worker with onnxruntime",
    ("paddle", "cpu"): "a CPU worker with Paddle",
}


def _need(engine: str, target: str, what: str) -> str:
    if what == routing.CONVERT_QUEUE_SUFFIX:
        return ("a worker with Paddle, paddle2onnx and onnx (pip install trtbatch[cpu])" if engine == "paddle"
                else "a worker with onnxruntime and onnx")
    if engine != "any" and target != "any":
        return _NEEDS[(engine, target)]
    if target != "any":
        return f"a worker with a {target} backend"
    if engine != "any":
        return f"any worker with the {engine} engine that serves {what}"
    return f"any worker that serves {what}"


def unservable_reason(workers: list[WorkerInfo], queue: str) -> str | None:
    """Why nobody will take work from ``queue`` now, or None if a live worker serves it."""
    if servers_of(workers, queue):
        return None
    engine, target, what = routing.parse_queue(queue)
    if what == routing.CALIBRATION_QUEUE_SUFFIX:
        what = "calibration jobs"
    alive = f"live: {', '.join(sorted(w.name for w in workers))}" if workers else "no worker is live at all"
    return (f"no live worker can serve queue {queue}: it needs {_need(engine, target, what)}; {alive}. "
            f"Start one with `trtbatch worker --device ...` on a suitable node.")
