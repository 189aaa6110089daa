"""Celery tasks, thin: decode the message, run it in this child's ``SlotContext``, sort failures.

Retry policy for a batch:

* permanent errors are written as failed records at once (runner.py), never retried;
* other exceptions are retried with exponential backoff (``retry_backoff_s * 2**n``), at most
  ``task_max_retries`` times, then the batch is dead-lettered: its images get failed records
  naming the last error, and the job finishes without them;
* a batch delivered more than ``max_deliveries`` times (its worker keeps dying on it) is
  dead-lettered too, so a batch that crashes the process cannot loop forever;
* a batch that outlives ``task_hard_time_limit_s`` has its process killed by Celery and is
  dead-lettered from the main process (``BatchTask.on_failure``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, shared_task
from celery.exceptions import Retry, TimeLimitExceeded

from common import keys
from common.errors import DecodeError, JobError
from common.schemas import BatchTask
from workers import runtime
from workers.app import INFER_TASK

log = logging.getLogger("trtbatch.tasks")


class BatchTaskBase(Task):
    """Adds dead-lettering for hard time limits, which Celery reports in the main process."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        try:
            task = BatchTask.decode(args[0])
            reason = f"batch exceeded the hard time limit of {exc.args[0] if exc.args else '?'} s"
            runtime.main_process_fail(task, reason)
        except Exception:  # pragma: no cover - best effort in the supervisor process
            log.exception("could not dead-letter timed-out task %s", task_id)


def infer(task_self: Task, message: dict[str, Any]) -> dict[str, Any]:
    ctx = runtime.slot_context()
    try:
        task = BatchTask.decode(message)
    except DecodeError as exc:
        log.error("dropping undecodable batch message: %s", exc)
        return {"skipped": "undecodable"}
    try:
        outcome = runtime.run(ctx, task)
    except JobError as exc:
        log.warning("batch %s/%d: %s", task.job_id, task.batch_no, exc)
        return {"skipped": str(exc)}
    except Retry:
        raise
    except Exception as exc:
        retries = task_self.request.retries
        reason = f"{type(exc).__name__}: {exc}"
        ctx.conn.hset(keys.job_attempts(task.job_id), f"{task.batch_no}:error", reason[:1000])
        if retries >= ctx.settings.task_max_retries:
            log.error("batch %s/%d dead-lettered after %d retries: %s", task.job_id, task.batch_no,
                      retries, reason)
            outcome = runtime.dead_letter(ctx, task, f"dead-lettered after {retries} retries: {reason}")
            return vars(outcome)
        countdown = ctx.settings.retry_backoff_s * (2 ** retries)
        log.warning("batch %s/%d failed (%s); retry %d in %.1fs", task.job_id, task.batch_no, reason,
                    retries + 1, countdown)
        raise task_self.retry(exc=exc, countdown=countdown, max_retries=ctx.settings.task_max_retries) \
            from exc
    return vars(outcome)


@shared_task(name=INFER_TASK, bind=True, base=BatchTaskBase, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def infer_batch(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    return infer(self, message)


def register(app: Celery) -> None:
    """Make sure every task module is imported. Tasks are ``shared_task``s, so any app - also the
    one a spawned pool process unpickles - gets them when it is finalized."""
    from workers import calibration_task, naive  # noqa: F401

    app.finalize()
