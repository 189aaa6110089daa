"""An idle pipeline slot gives its memory back: a real slot context (real Redis) and a real Paddle
predictor on the digits model, driven by the releaser's own clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from common import fleet
from common.artifacts import ArtifactStore
from common.config import Settings
from common.spec import NodeInfo, build_spec
from tests.conftest import STORE_DB
from tests.helpers import RedisServer
from workers.pipeline.context import SlotContext, WorkerIdentity, make_slot_context
from workers.pipeline.predictors import load_manifest
from workers.process.memory import IdleMemory

NODE = NodeInfo(paddle_version="2.6.2", cpu_count=2)


@pytest.fixture()
def slot(redis_server: RedisServer, store_conn: redis.Redis, session_dirs: dict[str, Path], digits,
         tmp_path: Path) -> Iterator[SlotContext]:
    settings = Settings.from_env({"TRTBATCH_REDIS_URL": f"{redis_server.url}?db={STORE_DB}",
                                  "TRTBATCH_CACHE_DIR": str(session_dirs["cache"])})
    ident = WorkerIdentity(name="memory@test", device="cpu", gpu_index=None, cpu_threads=1, slots=1,
                           decode_threads=1, capabilities=frozenset(NODE.capabilities("cpu")), queues=(), node=NODE,
                           lock_path=str(tmp_path / "device.lock"), shared_device=False)
    ctx = make_slot_context(settings, ident, 0)
    yield ctx
    ctx.predictors.close()
    ctx.pool.shutdown()
    ctx.conn.close()


def test_an_idle_slot_releases_then_drops_its_predictors(slot: SlotContext, digits) -> None:
    vid = ArtifactStore(slot.conn).publish_version("digits", digits["repo"] / "digits")
    manifest, model_dir = load_manifest(slot, vid)
    spec = build_spec(manifest, vid, NODE, "cpu", "cpu", "fp32", 64)
    predictor = slot.predictors.get(spec, model_dir, slot.engine_dir(spec.engine_cache_name()))
    batch = np.random.default_rng(0).random((64, *manifest.input.chw), np.float32)
    first = predictor.run(batch)
    slot.publish_state(state="ready")
    idle = IdleMemory(slot, release_after_s=10, evict_after_s=100)
    idle.busy()  # a task runs: nothing is touched, however long
    assert idle.tick(time.monotonic() + 1000) is None
    idle.idle()
    t0 = time.monotonic()
    assert idle.tick(t0 + 5) is None
    assert idle.tick(t0 + 10) == "released"
    assert idle.tick(t0 + 11) is None  # once per idle period
    assert slot.predictors.loaded()  # released, not dropped: the next batch finds it
    again = predictor.run(batch)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    idle.busy()
    idle.idle()
    t1 = time.monotonic()
    assert idle.tick(t1 + 100) == "evicted"
    assert slot.predictors.loaded() == []
    assert fleet.slot_state(slot.conn, "memory@test", 0).predictors == ()  # the fleet view says so
    assert idle.tick(t1 + 200) is None


def test_zero_turns_the_releaser_off(slot: SlotContext) -> None:
    idle = IdleMemory(slot, release_after_s=0, evict_after_s=0)
    assert idle.poll_s == 0 and idle.tick(time.monotonic() + 10**6) is None
    assert IdleMemory(slot, release_after_s=30, evict_after_s=600).poll_s == 3.0
