"""The hard time limit of thread slots.

Celery's threads pool cannot kill a thread, so it enforces no ``task_time_limit``. With thread slots
this thread does what a killed pool process leads to in the prefork pool: a batch still running
``task_hard_time_limit_s`` after it started gets one failed record per image (``TimeLimitError``,
written from here) - a calibration or conversion job is failed with that reason - and the worker
process exits (code 70), the only way to end a stuck thread. The launcher restarts the worker; the
batches its other slots held were not acknowledged, so they are delivered again (their results are
written idempotently), and that delivery counts towards their ``max_deliveries``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from common import redisconn
from common.errors import TimeLimitError
from common.schemas import BatchTask
from common.store import JobStore
from workers.pipeline.context import SlotContext
from workers.pipeline.results import fail_batch_from_main

log = logging.getLogger("trtbatch.watchdog")
EXIT_CODE = 70


def overdue(slots: list[SlotContext], now: float, limit_s: float) -> list[tuple[SlotContext, BatchTask | str]]:
    """The slots whose batch (a ``BatchTask``) or whole job (its id) has run longer than ``limit_s``."""
    late = []
    for ctx in slots:
        running = ctx.running
        if running is not None and now - running[0] > limit_s:
            late.append((ctx, running[1]))
    return late


class Watchdog:
    def __init__(self, slots: list[SlotContext], limit_s: float) -> None:
        self.slots, self.limit_s = slots, limit_s
        self.poll_s = min(5.0, max(0.1, limit_s / 20))

    def start(self) -> None:
        threading.Thread(target=self._loop, name="time-limit", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.poll_s)
            late = overdue(self.slots, time.monotonic(), self.limit_s)
            if late:
                self.end(late)

    def end(self, late: list[tuple[SlotContext, BatchTask | str]]) -> None:
        settings, identity = self.slots[0].settings, self.slots[0].identity
        conn = redisconn.client(settings)
        store = JobStore(conn, settings.result_ttl_s)
        for ctx, what in late:
            name = f"batch {what.job_id}/{what.batch_no}" if isinstance(what, BatchTask) else f"job {what}"
            log.error("slot %d: %s exceeded the hard time limit of %s s; failing it and restarting the worker",
                      ctx.slot, name, self.limit_s)
            error = TimeLimitError(f"{name.split()[0]} exceeded the hard time limit of {self.limit_s} s")
            try:
                if isinstance(what, BatchTask):
                    fail_batch_from_main(conn, store, identity, what, error)
                else:
                    store.finish(what, "failed", error=str(error))
            except Exception:  # the exit below must happen anyway: the thread is stuck
                log.exception("could not fail %s", name)
        logging.shutdown()
        os._exit(EXIT_CODE)
