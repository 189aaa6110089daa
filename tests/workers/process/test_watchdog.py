"""The thread slots' hard time limit: which running batches are over it (pure), and a releaser
shared by several slots that waits until none of them is busy."""

from __future__ import annotations

from types import SimpleNamespace

from workers.process.memory import IdleMemory
from workers.process.watchdog import overdue


def _slot(n: int, running=None):
    return SimpleNamespace(slot=n, running=running, predictors=SimpleNamespace(loaded=list, close=lambda: None),
                           publish_state=lambda **_: None)


def test_only_batches_past_the_limit_are_overdue() -> None:
    late, fresh, idle = _slot(0, (100.0, "task-a")), _slot(1, (170.0, "task-b")), _slot(2)
    assert overdue([late, fresh, idle], now=200.0, limit_s=60) == [(late, "task-a")]
    assert overdue([late, fresh, idle], now=150.0, limit_s=60) == []


def test_a_shared_releaser_waits_for_every_slot() -> None:
    idle = IdleMemory([_slot(0), _slot(1)], release_after_s=10, evict_after_s=20)  # type: ignore[list-item]
    idle.busy()
    idle.busy()
    idle.idle()  # one slot still runs a batch
    assert idle.tick(1e12) is None
    idle.idle()
    assert idle.tick(idle._idle_since + 5) is None
    assert idle.tick(idle._idle_since + 25) == "evicted"


def test_slot_pool_and_engine_stream_settings_are_checked() -> None:
    import argparse

    import pytest

    from common.config import Settings
    from common.errors import ConfigError
    from workers.process.main import build_identity, thread_slots

    assert thread_slots("auto") is False and thread_slots("processes") is False and thread_slots("threads") is True
    with pytest.raises(ConfigError, match="slot_pool must be"):
        thread_slots("thread")
    args = argparse.Namespace(device="cpu", gpu_index=0, name="x", threads=1, decode_threads=0, slots=1,
                              queues=None, warm=None)
    with pytest.raises(ConfigError, match="gpu_engine_stream must be default or own"):
        build_identity(Settings.from_env({"TRTBATCH_GPU_ENGINE_STREAM": "mine"}), args)
