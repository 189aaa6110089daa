"""``trtbatch retry``: resubmit a job's failed and cancelled images as a new job."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from cli.util import Context, Poller, Progress, echo_json, pass_ctx, reason_lines, warn_unservable
from producer import jobs as jobs_lib
from producer import retry as retry_lib


@click.command()
@click.argument("job_id")
@click.option("-w", "--wait", is_flag=True, help="Wait with a progress bar; exit 1 if any image failed again.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --wait: give up after this many seconds (exit 3; the job keeps running).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def retry(ctx: Context, job_id: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Resubmit JOB's failed and cancelled images as a new job with JOB's model, precision, backend, engine,
    batch size, top-k and raw-outputs setting (and the images' labels); prints the new job id."""
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    client = ctx.client
    plan = retry_lib.prepare(client, job_id)
    if not plan.images:
        _nothing(plan, as_json)
        return
    if not as_json:
        _describe(plan)
    progress = Progress(enabled=wait and not as_json)
    try:
        with Poller(client, plan.job_id, progress) if wait else contextlib.nullcontext():
            new_id = retry_lib.send(client, plan, on_warning=lambda m: click.echo(f"warning: {m}", err=True))
    finally:
        progress.done()
    source_version, version = plan.source.version_id, client.store.record(new_id).version_id
    if version != source_version and not as_json:
        click.echo(f"note: {plan.source.model} changed since {job_id} ran ({source_version} -> {version}); "
                   f"the retry runs {version}", err=True)
    status = jobs_lib.status(client, new_id)
    out = {"job_id": new_id, "retry_of": job_id, "version_id": version, "unservable": status.get("unservable"),
           "retried": {"images": plan.images, "failed": plan.failed, "cancelled": plan.cancelled,
                       "not_found": plan.n_missing, "no_path": plan.no_path}}
    if not as_json:  # a retry of a job nobody could serve usually cannot be served either: say so now
        warn_unservable(status, ctx.settings.unservable_grace_s)
    if not wait:
        echo_json(out) if as_json else click.echo(new_id)
        return
    final = jobs_lib.wait(client, new_id, on_progress=progress, timeout_s=timeout)
    progress.done()
    _report(out, final, as_json)


def _nothing(plan: retry_lib.RetryPlan, as_json: bool) -> None:
    job_id = plan.source.job_id
    if as_json:
        echo_json({"job_id": None, "retry_of": job_id, "retried": {"images": 0, "no_path": plan.no_path}})
    elif plan.no_path:
        click.echo(f"job {job_id}: none of its {plan.no_path} failed image(s) has a recorded path (the job ended "
                   "after their payloads expired); nothing to retry: submit the original inputs again")
    else:
        click.echo(f"job {job_id} has no failed or cancelled images; nothing to retry")


def _describe(plan: retry_lib.RetryPlan) -> None:
    cancelled = f", {plan.cancelled} cancelled" if plan.cancelled else ""
    click.echo(f"retrying {plan.images} image(s) of {plan.source.job_id} ({plan.failed} failed{cancelled}) "
               f"as job {plan.job_id}", err=True)
    if plan.n_missing:
        click.echo(f"warning: {plan.n_missing} of them are no longer at their recorded path (e.g. "
                   f"{plan.missing[0]!r}) and will fail again", err=True)
    if plan.no_path:
        click.echo(f"warning: {plan.no_path} failed image(s) have no recorded path (the job ended after their "
                   "payloads expired) and are not retried", err=True)


def _report(out: dict[str, Any], final: Any, as_json: bool) -> None:
    if as_json:
        echo_json({**final.as_dict(), **out})
    else:
        cancelled = f", {final.cancelled} cancelled" if final.cancelled else ""
        click.echo(f"{out['job_id']}: {final.state}, {final.done} ok, {final.failed} failed{cancelled}")
        for line in reason_lines(final.error_reasons, final.failed + final.cancelled, limit=5):
            click.echo(line, err=True)
    if final.failed or final.cancelled or final.state != "done":
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(retry)
