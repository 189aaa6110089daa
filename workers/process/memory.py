"""A pipeline slot's memory between batches: what its predictors keep is released when it idles.

Paddle keeps a predictor's intermediate tensors at the size of the largest batch it ran (a ResNet50
batch of 256 on CPU: about 10 GB) and its allocator keeps freed chunks; glibc keeps freed heap. So a
pool process that ran one big batch stayed that big while idle. Here, in each pool process:

* after ``idle_release_s`` without a batch, every Paddle predictor frees its intermediate tensors and
  cached allocations (``clear_intermediate_tensor``, ``try_shrink_memory``) and ``malloc_trim(0)``
  hands free heap back to the OS;
* after ``predictor_idle_evict_s`` without a batch, the slot's predictors are dropped (rebuilt on
  the next batch), which also frees what ONNX Runtime keeps, and the slot record says so.

A daemon thread does it, never while a task runs: Celery's task signals mark the slot busy under a
lock the thread holds while it releases, so a task that starts meanwhile waits for it (milliseconds).
With thread slots one releaser serves all the process's slots and waits until none is busy: Paddle's
release touches every predictor of the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import threading
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from workers.pipeline.context import SlotContext

log = logging.getLogger("trtbatch.memory")


def malloc_trim() -> bool:
    """Return glibc's free heap to the OS (False where there is no glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    return False


class IdleMemory:
    """The releaser of one pool process: its slot, or all its thread slots."""

    def __init__(self, ctx: SlotContext | list[SlotContext], release_after_s: float, evict_after_s: float) -> None:
        self.slots = ctx if isinstance(ctx, list) else [ctx]
        self.release_after_s, self.evict_after_s = release_after_s, evict_after_s
        self._lock = threading.Lock()
        self._busy = 0  # tasks running
        self._idle_since = time.monotonic()
        self._done: set[str] = set()  # what was done since the last batch: "released", "evicted"
        self._stop = threading.Event()

    @property
    def poll_s(self) -> float:
        """How often the thread looks: a tenth of the shorter wait, between 0.1 and 5 s."""
        waits = [w for w in (self.release_after_s, self.evict_after_s) if w > 0]
        return min(5.0, max(0.1, min(waits) / 10)) if waits else 0.0

    def start(self) -> None:
        if self.poll_s:
            threading.Thread(target=self._loop, name="idle-memory", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def busy(self) -> None:
        with self._lock:
            self._busy += 1

    def idle(self) -> None:
        with self._lock:
            self._busy = max(0, self._busy - 1)
            if not self._busy:
                self._idle_since = time.monotonic()
                self._done.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick(time.monotonic())
            except Exception as exc:  # a failed release must not end the thread (or the slot)
                log.warning("releasing idle memory failed: %s", exc)

    def tick(self, now: float) -> str | None:
        """Release or evict if the slot has idled long enough; returns what was done."""
        with self._lock:
            idle_s = now - self._idle_since
            if self._busy:
                return None
            if self.evict_after_s and idle_s >= self.evict_after_s and "evicted" not in self._done:
                return self._evict(idle_s)
            if self.release_after_s and idle_s >= self.release_after_s and not self._done:
                return self._release(idle_s)
        return None

    def _release(self, idle_s: float) -> str:
        # only if this process loaded Paddle: releasing must not import it into one that never did
        paddle_engine = sys.modules.get("workers.engines.paddle_engine")
        n = paddle_engine.release_memory() if paddle_engine is not None else 0
        malloc_trim()
        self._done.add("released")
        log.info("%s idle %.0fs: released the memory of %d predictor(s)", self._which, idle_s, n)
        return "released"

    def _evict(self, idle_s: float) -> str:
        loaded = 0
        for ctx in self.slots:
            n = len(ctx.predictors.loaded())
            ctx.predictors.close()
            if n:
                ctx.publish_state()  # the fleet view lists the slot's predictors
            loaded += n
        malloc_trim()
        self._done.update(("released", "evicted"))
        log.info("%s idle %.0fs: dropped %d predictor(s)", self._which, idle_s, loaded)
        return "evicted"

    @property
    def _which(self) -> str:
        return "slot(s) " + ", ".join(str(ctx.slot) for ctx in self.slots)


_current: IdleMemory | None = None


def install(ctx: SlotContext | list[SlotContext]) -> IdleMemory:
    """Start this pool process's releaser (workers/process/runtime.py, once its slots exist)."""
    global _current
    settings = (ctx[0] if isinstance(ctx, list) else ctx).settings
    _current = IdleMemory(ctx, settings.idle_release_s, settings.predictor_idle_evict_s)
    _current.start()
    return _current


@task_prerun.connect
def _task_starts(**_: Any) -> None:
    if _current is not None:
        _current.busy()


@task_postrun.connect
def _task_ends(**_: Any) -> None:
    if _current is not None:
        _current.idle()
