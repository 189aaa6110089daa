"""Celery tasks, thin: decode the message, run it in this process's ``SlotContext``, apply the policy
that common/errors.py defines.

For a batch:

* a ``PermanentError`` fails every image of the batch at once, with its reason and code; a
  ``JobError`` (the job is gone) drops the batch;
* anything else (``RetryableError``, a payload that does not decode, an unforeseen exception) is
  retried with exponential backoff (``retry_backoff_s * 2**n``), at most ``task_max_retries``
  times, then the batch is dead-lettered: its images get failed records naming the last error;
* a batch delivered more than ``max_deliveries`` times (its worker keeps dying on it) is
  dead-lettered too, so a batch that crashes the process cannot loop forever (workers/pipeline/batch.py);
* a batch that outlives ``task_hard_time_limit_s`` has its process killed by Celery and is
  failed from the main process with ``TimeLimitError`` (``BatchTaskBase.on_failure``); with thread
  slots the worker's watchdog does both (workers/process/watchdog.py).

Calibration and conversion jobs follow the same policy (workers/pipeline/jobs.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task, shared_task
from celery.exceptions import Retry, TimeLimitExceeded

from common import keys, redisconn
from common.celery_app import CALIBRATE_TASK, CONVERT_TASK, INFER_TASK
from common.errors import DeadLetterError, DecodeError, JobError, PermanentError, TimeLimitError
from common.schemas import BatchTask, CalibTask, ConvertTask
from common.store import JobStore
from workers.pipeline import context
from workers.pipeline.batch import run_batch
from workers.pipeline.jobs import run_job
from workers.pipeline.results import fail_batch, fail_batch_from_main

log = logging.getLogger("trtbatch.tasks")


class BatchTaskBase(Task):
    """Fails a batch with ``TimeLimitError`` when its hard time limit killed its pool process, which
    Celery reports in the worker's main process."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        try:
            task = BatchTask.decode(args[0])
            settings, identity = context.configured()
            conn = redisconn.client(settings)
            error = TimeLimitError(f"batch exceeded the hard time limit of {exc.args[0] if exc.args else '?'} s")
            fail_batch_from_main(conn, JobStore(conn, settings.result_ttl_s), identity, task, error)
        except Exception:  # pragma: no cover - best effort in the supervisor process
            log.exception("could not dead-letter timed-out task %s", task_id)


def infer(task_self: Task, message: dict[str, Any]) -> dict[str, Any]:
    ctx = context.current()
    try:
        task = BatchTask.decode(message)
    except DecodeError as exc:
        log.error("dropping undecodable batch message: %s", exc)
        return {"skipped": "undecodable"}
    ctx.running = (time.monotonic(), task)
    try:
        return vars(run_batch(ctx, task))
    except JobError as exc:
        log.warning("batch %s/%d: %s", task.job_id, task.batch_no, exc)
        ctx.publish_state(current_batch=None)
        return {"skipped": str(exc)}
    except Retry:
        raise
    except PermanentError as exc:
        return vars(fail_batch(ctx, task, exc))
    except Exception as exc:
        ctx.publish_state(last_error=f"{type(exc).__name__}: {exc}"[:500], current_batch=None)
        return retry_or_dead_letter(task_self, ctx, task, exc)
    finally:
        ctx.running = None


def retry_or_dead_letter(task_self: Task, ctx: context.SlotContext, task: BatchTask, exc: Exception
                         ) -> dict[str, Any]:
    retries = task_self.request.retries
    reason = f"{type(exc).__name__}: {exc}"
    ctx.conn.hset(keys.job_attempts(task.job_id), f"{task.batch_no}:error", reason[:1000])
    if retries >= ctx.settings.task_max_retries:
        log.error("batch %s/%d dead-lettered after %d retries: %s", task.job_id, task.batch_no, retries, reason)
        error = DeadLetterError(f"dead-lettered after {retries} retries: {reason}")
        ctx.publish_state(last_error=str(error)[:500])
        return vars(fail_batch(ctx, task, error))
    countdown = ctx.settings.retry_backoff_s * (2 ** retries)
    log.warning("batch %s/%d failed (%s); retry %d in %.1fs", task.job_id, task.batch_no, reason, retries + 1,
                countdown)
    raise task_self.retry(exc=exc, countdown=countdown, max_retries=ctx.settings.task_max_retries) from exc


@shared_task(name=INFER_TASK, bind=True, base=BatchTaskBase, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def infer_batch(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    return infer(self, message)


@shared_task(name=CALIBRATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def calibrate_task(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    from workers.pipeline.calibration import run_calibration

    task = CalibTask.decode(message)
    return run_job(self, task.job_id, lambda ctx: run_calibration(ctx, task),
                   (*task.payload_keys, *task.eval_payload_keys))


@shared_task(name=CONVERT_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def convert_task(self: Task, message: dict[str, Any]) -> dict[str, Any]:
    from workers.pipeline.convert import run_conversion

    task = ConvertTask.decode(message)
    return run_job(self, task.job_id, lambda ctx: run_conversion(ctx, task), task.check_payload_keys)


def register(app: Celery) -> None:
    """Finalize ``app`` with the tasks of this module. They are ``shared_task``s, so any app - also
    the one a spawned pool process unpickles - gets them when it is finalized."""
    app.finalize()
