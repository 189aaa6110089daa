"""The fleet registry on a real redis-server: heartbeats, slots, rates, expiry, and why a queue waits."""

from __future__ import annotations

import time

import pytest
import redis

from common import fleet, keys
from common.fleet import WorkerInfo
from common.schemas import SlotState

TTL = 10


def cpu_worker(name: str = "cpu@node1", **kw: object) -> WorkerInfo:
    base: dict[str, object] = {"host": "node1", "pid": 4242, "device": "cpu", "cpu_threads": 8,
                               "capabilities": ["paddle:cpu/fp32", "paddle:cpu/int8"], "state": "ready",
                               "queues": ["trtbatch.paddle.cpu.fp32", "trtbatch.any.any.fp32",
                                          "trtbatch.paddle.cpu.int8", "trtbatch.any.any.int8",
                                          "trtbatch.paddle.any.calib"],
                               "paddle_version": "2.6.2", "started_s": time.time()}
    return WorkerInfo(name=name, **{**base, **kw})  # type: ignore[arg-type]


def gpu_worker(name: str = "gpu0@node2") -> WorkerInfo:
    return WorkerInfo(name=name, host="node2", device="gpu", gpu_index=0, gpu_name="NVIDIA H100",
                      gpu_memory_used_mb=1200, gpu_memory_total_mb=81559, state="ready", trt_version="8.5.3",
                      capabilities=["paddle:gpu/fp32", "paddle:trt/fp32", "paddle:trt/fp16", "paddle:trt/int8"],
                      queues=["trtbatch.paddle.trt.int8", "trtbatch.any.any.int8", "trtbatch.paddle.trt.fp16",
                              "trtbatch.any.any.fp16"])


def test_publish_and_list(store_conn: redis.Redis) -> None:
    info = cpu_worker()
    fleet.publish(store_conn, info, TTL)
    fleet.publish(store_conn, gpu_worker(), TTL)
    live = {w.name: w for w in fleet.live_workers(store_conn, TTL)}
    assert set(live) == {"cpu@node1", "gpu0@node2"}
    got = live["cpu@node1"]
    assert got.host == "node1" and got.pid == 4242 and got.cpu_threads == 8 and got.gpu_index is None
    assert got.queues == info.queues and got.capabilities == info.capabilities
    assert got.caps() == {("paddle", "cpu", "fp32"), ("paddle", "cpu", "int8")}
    assert got.last_seen_s == pytest.approx(time.time(), abs=5)
    assert got.slots == [] and got.images_per_s == 0.0
    gpu = live["gpu0@node2"]
    assert gpu.gpu_index == 0 and gpu.gpu_memory_total_mb == 81559 and ("paddle", "trt", "int8") in gpu.caps()
    assert 0 < store_conn.ttl(keys.worker("cpu@node1")) <= TTL


def _slot(conn: redis.Redis, worker: str, slot: int, state: SlotState, ttl: int) -> None:
    pipe = conn.pipeline()
    fleet.add_slot_state(pipe, worker, slot, state, ttl)
    pipe.execute()


def _images(conn: redis.Redis, worker: str, n: int) -> None:
    pipe = conn.pipeline()
    fleet.add_images(pipe, worker, n)
    pipe.execute()


def test_slot_states(store_conn: redis.Redis) -> None:
    fleet.publish(store_conn, cpu_worker(), TTL)
    busy = SlotState(pid=11, state="busy", current_batch="j:3", predictors=({"backend": "cpu", "runs": 2},))
    _slot(store_conn, "cpu@node1", 0, busy, TTL)
    _slot(store_conn, "cpu@node1", 2, SlotState(pid=13, state="idle"), TTL)
    (w,) = fleet.live_workers(store_conn, TTL)
    assert w.slots == [busy, SlotState(pid=13, state="idle")]
    assert w.slots[0].predictors == ({"backend": "cpu", "runs": 2},) and w.slots[0].current_batch == "j:3"
    assert 0 < store_conn.ttl(keys.worker_slot("cpu@node1", 2)) <= TTL


def test_images_per_s_over_the_last_minute(store_conn: redis.Redis) -> None:
    fleet.publish(store_conn, cpu_worker(), TTL)
    _images(store_conn, "cpu@node1", 30)
    _images(store_conn, "cpu@node1", 60)
    old = time.time() - fleet.RATE_WINDOW_S - 5
    store_conn.zadd(keys.worker_rate("cpu@node1"), {f"{old:.6f}:6000": old})  # outside the window
    (w,) = fleet.live_workers(store_conn, TTL)
    assert w.images_per_s == pytest.approx(90 / fleet.RATE_WINDOW_S, abs=0.01)
    assert 0 < store_conn.ttl(keys.worker_rate("cpu@node1")) <= 2 * fleet.RATE_WINDOW_S


def test_stale_heartbeat_disappears(store_conn: redis.Redis) -> None:
    fleet.publish(store_conn, cpu_worker(), TTL)
    fleet.publish(store_conn, cpu_worker("cpu@node3"), TTL)
    store_conn.zadd(keys.WORKERS, {"cpu@node1": time.time() - TTL - 1})  # its last heartbeat is too old
    assert [w.name for w in fleet.live_workers(store_conn, TTL)] == ["cpu@node3"]
    fleet.publish(store_conn, gpu_worker(), TTL)  # any heartbeat prunes stale names from the index
    assert store_conn.zscore(keys.WORKERS, "cpu@node1") is None


def test_expired_record_is_skipped(store_conn: redis.Redis) -> None:
    fleet.publish(store_conn, cpu_worker(), TTL)
    store_conn.delete(keys.worker("cpu@node1"))  # what the hash TTL does
    assert fleet.live_workers(store_conn, TTL) == []


def test_remove(store_conn: redis.Redis) -> None:
    fleet.publish(store_conn, cpu_worker(), TTL)
    _slot(store_conn, "cpu@node1", 0, SlotState(state="idle"), TTL)
    _images(store_conn, "cpu@node1", 1)
    fleet.remove(store_conn, "cpu@node1", slots=2)
    assert fleet.live_workers(store_conn, TTL) == []
    assert store_conn.keys("trtbatch:worker*") == []


def test_servers_skip_draining_workers() -> None:
    ready, draining = cpu_worker("a"), cpu_worker("b", state="draining")
    assert fleet.servers_of([ready, draining], "trtbatch.paddle.cpu.fp32") == [ready]
    assert fleet.servers_of([ready, draining], "trtbatch.trt.fp32") == []


def test_unservable_reason() -> None:
    cpu, gpu = cpu_worker(), gpu_worker()
    assert fleet.unservable_reason([cpu], "trtbatch.any.any.fp32") is None
    assert fleet.unservable_reason([cpu, gpu], "trtbatch.paddle.trt.int8") is None
    assert fleet.unservable_reason([cpu], "trtbatch.paddle.trt.int8") == (
        "no live worker can serve queue trtbatch.paddle.trt.int8: it needs a GPU worker with Paddle-TensorRT "
        "(paddlepaddle-gpu built with TensorRT, libnvinfer present); live: cpu@node1. "
        "Start one with `trtbatch worker --device ...` on a suitable node.")
    assert "it needs a GPU worker whose paddlepaddle-gpu passes the GPU self-test; live: cpu@node1, gpu0@node2" in str(
        fleet.unservable_reason([gpu, cpu], "trtbatch.paddle.gpu.fp32"))
    assert "it needs a GPU worker with onnxruntime-gpu (CUDA EP)" in str(
        fleet.unservable_reason([gpu, cpu], "trtbatch.onnxruntime.gpu.fp16"))
    assert "it needs any worker that serves bf16; no worker is live at all" in str(
        fleet.unservable_reason([], "trtbatch.any.any.bf16"))
    assert "it needs a CPU worker with Paddle" in str(fleet.unservable_reason([gpu], "trtbatch.paddle.cpu.fp32"))
    assert "live: cpu@node1" in str(fleet.unservable_reason([cpu_worker(state="draining")],
                                                           "trtbatch.paddle.cpu.fp32"))
    assert "Paddle, paddle2onnx and onnx" in str(fleet.unservable_reason([cpu], "trtbatch.paddle.any.convert"))
