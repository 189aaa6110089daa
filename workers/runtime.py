"""Process-wide worker state and the Celery signal handlers that build it.

The main process calls ``configure`` before the pool forks; each child builds its
``SlotContext`` in ``worker_process_init`` - the first moment Paddle may be imported - and warms
the predictors named by ``--warm`` before it takes a batch.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import zlib  # noqa: F401  # before paddle (paddlepaddle 2.6.2 segfaults on first zlib use otherwise)
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from common.config import Settings
from common.schemas import BatchTask
from workers.context import IDENTITY_ENV, SlotContext, WorkerIdentity, identity_from_json, make_slot_context

log = logging.getLogger("trtbatch.runtime")

_SETTINGS: Settings | None = None
_IDENTITY: WorkerIdentity | None = None
_CTX: SlotContext | None = None
_MAIN: dict[str, Any] = {}


def configure(settings: Settings, identity: WorkerIdentity) -> None:
    global _SETTINGS, _IDENTITY
    _SETTINGS, _IDENTITY = settings, identity


def identity() -> WorkerIdentity:
    if _IDENTITY is None:
        raise RuntimeError("worker runtime is not configured")
    return _IDENTITY


def settings() -> Settings:
    if _SETTINGS is None:
        raise RuntimeError("worker runtime is not configured")
    return _SETTINGS


def slot_context() -> SlotContext:
    if _CTX is None:
        raise RuntimeError("no slot context: this process is not a worker child")
    return _CTX


def _slot_index() -> int:
    try:
        from billiard.process import current_process

        return int(getattr(current_process(), "index", 0) or 0)
    except Exception:  # pragma: no cover
        return 0


@worker_process_init.connect
def _init_child(**_: Any) -> None:
    """Build this child's context after the fork: Paddle is first imported here."""
    global _CTX
    if _IDENTITY is None and os.environ.get(IDENTITY_ENV):  # a spawned pool process
        configure(Settings.from_env(), identity_from_json(os.environ[IDENTITY_ENV]))
    if _SETTINGS is None or _IDENTITY is None:
        return
    import paddle  # noqa: F401  # import once, now, so the first batch does not pay for it

    # Shutdown is the main process's business: it stops taking work and lets each pool process
    # finish its batch. A SIGTERM sent to the whole process group (systemd's default KillMode,
    # `kill -- -PGID`, a terminal) would otherwise kill a pool process mid-batch and the batch would
    # run again elsewhere. Set after importing Paddle, which installs its own SIGTERM handler. Hard
    # time limits still end a stuck pool process (Celery follows TERM with KILL).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _IDENTITY.device == "gpu":
        from workers.predictors import init_cuda

        init_cuda()
    _CTX = make_slot_context(_SETTINGS, _IDENTITY, _slot_index())
    # current_batch=None: a pool process replacing one that died mid-batch must not show its batch
    _CTX.publish_state(state="warming" if _IDENTITY.warm else "ready", started_s=time.time(),
                       start_id=_IDENTITY.start_id, current_batch=None)
    if _IDENTITY.warm:
        from workers.warm import warm_all

        warm_all(_CTX, _IDENTITY.warm)
    _CTX.publish_state(state="ready", ready_s=time.time())
    log.info("slot %d ready (pid %d)", _CTX.slot, os.getpid())


@worker_process_shutdown.connect
def _shutdown_child(pid: int | None = None, **_: Any) -> None:
    from workers import metrics

    metrics.mark_dead(pid or os.getpid())
    if _CTX is not None:
        _CTX.predictors.close()
        _CTX.pool.shutdown(wait=False, cancel_futures=True)


def run(ctx: SlotContext, task: BatchTask):
    from workers.runner import run_batch

    try:
        return run_batch(ctx, task)
    except Exception as exc:
        ctx.publish_state(last_error=f"{type(exc).__name__}: {exc}"[:500], current_batch=None)
        raise


def dead_letter(ctx: SlotContext, task: BatchTask, reason: str):
    from workers.runner import fail_batch

    ctx.publish_state(last_error=reason[:500])
    return fail_batch(ctx, task, reason, "dead_letter", dead=True)


def main_process_fail(task: BatchTask, reason: str) -> None:
    """Dead-letter a batch from the worker's main process (its child was killed)."""
    from common import redisconn
    from common.store import JobStore
    from workers.runner import fail_batch

    if "ctx" not in _MAIN:
        conn = redisconn.client(settings())
        _MAIN["ctx"] = _MainContext(settings(), identity(), conn, JobStore(conn, settings().result_ttl_s))
    fail_batch(_MAIN["ctx"], task, reason, "time_limit", dead=True)


class _MainContext:
    """The subset of ``SlotContext`` that ``fail_batch`` needs, for the main process."""

    def __init__(self, settings_: Settings, ident: WorkerIdentity, conn: Any, store: Any) -> None:
        self.settings, self.identity, self.conn, self.store = settings_, ident, conn, store
