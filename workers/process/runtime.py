"""The Celery signal handlers that turn a pool process into a pipeline slot.

The main process calls ``configure`` before the pool starts; each pool process builds its
``SlotContext`` (workers/pipeline/context.py) in ``worker_process_init`` - the first moment an
engine may load - and warms the predictors named by ``--warm`` before it takes a batch. With thread
slots the worker process builds every slot's context itself (``start_thread_slots``, from the
``WarmGate`` step, before the consumer starts) and a watchdog stands in for Celery's hard time limit.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from common.config import Settings
from workers.pipeline import context
from workers.pipeline.context import IDENTITY_ENV, WorkerIdentity, make_slot_context
from workers.process import memory
from workers.process.watchdog import Watchdog

log = logging.getLogger("trtbatch.runtime")


def configure(settings: Settings, identity: WorkerIdentity) -> None:
    context.configure(settings, identity)


def _slot_index() -> int:
    try:
        from billiard.process import current_process

        return int(getattr(current_process(), "index", 0) or 0)
    except Exception:  # pragma: no cover
        return 0


def _observer() -> context.SlotObserver | None:
    from workers.process import metrics

    return metrics.observer(context.configured()[1].name)


def start_slot(settings: Settings, identity: WorkerIdentity, slot: int) -> context.SlotContext:
    """One slot's context, published as warming, warmed (``--warm``), then ready."""
    ctx = make_slot_context(settings, identity, slot, _observer())
    # current_batch=None: a pool process replacing one that died mid-batch must not show its batch
    ctx.publish_state(state="warming" if identity.warm else "ready", started_s=time.time(),
                      start_id=identity.start_id, current_batch=None)
    if identity.warm:
        from workers.process.warm import warm_all

        warm_all(ctx, identity.warm)
    ctx.publish_state(state="ready", ready_s=time.time())
    log.info("slot %d ready (pid %d)", ctx.slot, os.getpid())
    return ctx


@worker_process_init.connect
def _init_child(**_: Any) -> None:
    """Build this pool process's slot context: engines are first loaded here."""
    if os.environ.get(IDENTITY_ENV):
        try:
            context.configured()
        except RuntimeError:  # a spawned pool process: rebuild from the environment
            configure(Settings.from_env(), WorkerIdentity.decode(os.environ[IDENTITY_ENV]))
    try:
        settings, identity = context.configured()
    except RuntimeError:
        return
    _preload(identity)
    # Shutdown is the main process's business: it stops taking work and lets each pool process
    # finish its batch. A SIGTERM sent to the whole process group (systemd's default KillMode,
    # `kill -- -PGID`, a terminal) would otherwise kill a pool process mid-batch and the batch would
    # run again elsewhere. Set after loading the engines (Paddle installs its own SIGTERM handler). Hard
    # time limits still end a stuck pool process (Celery follows TERM with KILL).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = start_slot(settings, identity, _slot_index())
    context.install(ctx)
    memory.install(ctx)


_THREAD_SLOTS: list[context.SlotContext] = []


def start_thread_slots() -> list[context.SlotContext]:
    """Thread slots: every slot's context, built in the worker process and offered to the pool threads."""
    settings, identity = context.configured()
    celery_sigterm = signal.getsignal(signal.SIGTERM)  # Celery's warm shutdown
    _preload(identity)
    for slot in range(identity.slots):
        ctx = start_slot(settings, identity, slot)
        _THREAD_SLOTS.append(ctx)
        context.offer(ctx)
    # Paddle installs a SIGTERM handler that aborts the process: here that is the worker itself,
    # whose SIGTERM must stay a warm shutdown (finish the running batches, then exit)
    signal.signal(signal.SIGTERM, celery_sigterm)
    memory.install(list(_THREAD_SLOTS))
    Watchdog(list(_THREAD_SLOTS), settings.task_hard_time_limit_s).start()
    return list(_THREAD_SLOTS)


@worker_shutdown.connect
def _shutdown_thread_slots(**_: Any) -> None:
    # Celery sends worker_shutdown after a warm shutdown has let the running batches finish; a cold
    # shutdown (a second Ctrl-C, SIGQUIT) does not, and GPU decoders are then left to the exit
    from workers.pipeline.gpu_decoders import close_process_decoders

    close_process_decoders()  # decoders first, as _close does for a slot's own
    for ctx in _THREAD_SLOTS:
        _close(ctx)


@worker_process_shutdown.connect
def _shutdown_child(pid: int | None = None, **_: Any) -> None:
    from workers.process import metrics

    metrics.mark_dead(pid or os.getpid())
    try:
        ctx = context.current()
    except RuntimeError:
        return
    _close(ctx)


def _preload(identity: WorkerIdentity) -> None:
    """Load the engines once, now, so the first batch does not pay for it."""
    from workers import engines

    engines.preload(identity.device, {engine for engine, _, _ in identity.capabilities})


def _close(ctx: context.SlotContext) -> None:
    from workers.pipeline.gpu_decoders import close_decoders

    close_decoders(ctx.gpu_decoders)
    ctx.predictors.close()
    ctx.pool.shutdown(wait=False, cancel_futures=True)
