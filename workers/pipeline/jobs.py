"""Whole-job tasks (calibration, conversion): one message does the job, with the batches' policy.

A ``PermanentError`` fails the job at once with its reason; anything else (a Redis blip, a worker
running out of memory) is retried with exponential backoff, ``task_max_retries`` times, before the
job fails naming the last error. A retry starts over: every step of these jobs is idempotent
(versions, tables and reports are content-addressed or keyed by what made them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Retry

from common.errors import PermanentError
from common.schemas import TERMINAL_STATES
from workers.pipeline import context
from workers.pipeline.context import SlotContext

log = logging.getLogger("trtbatch.jobs")


def run_job(task_self: Task, job_id: str, body: Callable[[SlotContext], dict[str, Any]],
            payload_keys: tuple[str, ...]) -> dict[str, Any]:
    """Run ``body`` for the job, record its outcome in the job record, drop its payloads when done."""
    ctx = context.current()
    if ctx.store.job_state(job_id) in TERMINAL_STATES:
        return {"skipped": "job already finished"}
    ctx.running = (time.monotonic(), job_id)
    try:
        result = body(ctx)
    except PermanentError as exc:
        ctx.store.finish(job_id, "failed", error=str(exc))
        return {"error": str(exc)}
    except Retry:
        raise
    except Exception as exc:
        return retry_or_fail(task_self, ctx, job_id, exc)
    finally:
        ctx.running = None
    ctx.store.finish(job_id, "done", **{k: v for k, v in result.items() if k != "report"})
    if payload_keys:
        ctx.conn.delete(*payload_keys)
    return {"result_version": result.get("result_version")}


def retry_or_fail(task_self: Task, ctx: SlotContext, job_id: str, exc: Exception) -> dict[str, Any]:
    retries = task_self.request.retries
    reason = f"{type(exc).__name__}: {exc}"
    if retries >= ctx.settings.task_max_retries:
        log.error("job %s failed after %d retries: %s", job_id, retries, reason)
        ctx.store.finish(job_id, "failed", error=f"failed after {retries} retries: {reason}"[:2000])
        return {"error": reason}
    countdown = ctx.settings.retry_backoff_s * (2 ** retries)
    log.warning("job %s failed (%s); retry %d in %.1fs", job_id, reason, retries + 1, countdown)
    raise task_self.retry(exc=exc, countdown=countdown, max_retries=ctx.settings.task_max_retries) from exc
