"""The hard time limit of thread slots.

Celery's threads pool cannot kill a thread, so it enforces no ``task_time_limit``. With thread slots
this thread does what a killed pool process leads to in the prefork pool: a batch still running
``task_hard_time_limit_s`` after it started gets one failed record per image (``TimeLimitError``,
written from here), and the worker process exits (code 70) - the only way to end a stuck thread. The
launcher restarts the worker; the batches its other slots held were not acknowledged, so they are
delivered again (their results are written idempotently).
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


def overdue(slots: list[SlotContext], now: float, limit_s: float) -> list[tuple[SlotContext, BatchTask]]:
    """The slots whose batch has run longer than ``limit_s``, with that batch."""
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

    def end(self, late: list[tuple[SlotContext, BatchTask]]) -> None:
        settings, identity = self.slots[0].settings, self.slots[0].identity
        conn = redisconn.client(settings)
        for ctx, task in late:
            log.error("slot %d: batch %s/%d exceeded the hard time limit of %s s; failing it and restarting the "
                      "worker", ctx.slot, task.job_id, task.batch_no, self.limit_s)
            try:
                fail_batch_from_main(conn, JobStore(conn, settings.result_ttl_s), identity, task,
                                     TimeLimitError(f"batch exceeded the hard time limit of {self.limit_s} s"))
            except Exception:  # the exit below must happen anyway: the thread is stuck
                log.exception("could not fail batch %s/%d", task.job_id, task.batch_no)
        logging.shutdown()
        os._exit(EXIT_CODE)
