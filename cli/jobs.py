"""``trtbatch status | jobs [list | delete | purge] | cancel``."""

from __future__ import annotations

import time
from typing import Any

import click

from cli.submit import format_accuracy
from cli.util import Context, echo_json, pass_ctx, reason_lines
from common import closeout
from producer import jobs as jobs_lib


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (numbers, booleans and lists as such).")
@pass_ctx
def status(ctx: Context, job_id: str, as_json: bool) -> None:
    """Show a job's state, counts, failure reasons, accuracy (labelled jobs), who can serve it and which
    workers wrote its results."""
    st = jobs_lib.status(ctx.client, job_id)
    if as_json:
        echo_json(st)
        return
    total = f"{st['n_images']}" + ("" if st["submit_complete"] else "+ (still submitting)")
    cancelled = f", {st['cancelled']} cancelled" if st["cancelled"] else ""
    click.echo(f"job        {job_id}\nstate      {st['state']}\nmodel      {st['model']} ({st['version_id']}) "
               f"{st['precision']} on engine {st['engine']}, backend {st['target']}\n"
               f"images     {total}: {st['done']} ok, {st['failed']} failed{cancelled}, {st['pending']} pending")
    if st.get("elapsed_s") is not None:
        rate = f" ({st['images_per_s']:.1f} img/s)" if st.get("images_per_s") is not None else ""
        click.echo(f"elapsed    {st['elapsed_s']:.1f}s{rate}")
    _optional_lines(st)


def _optional_lines(st: dict[str, Any]) -> None:
    lines = [("error      {}", st.get("error")), ("dead       {} batch(es) dead-lettered", st.get("batches_dead"))]
    lines += [("{}", line) for line in reason_lines(st["error_reasons"], st["failed"] + st["cancelled"])]
    lines += [("{}", st.get("accuracy") and format_accuracy(st["accuracy"])),
              ("results by {}", ", ".join(f"{w} ({n} image{'' if n == 1 else 's'})"
                                          for w, n in (st.get("served_images") or {}).items())),
              ("serving    {}", ", ".join(st.get("serving") or [])), ("warning    {}", st.get("unservable"))]
    for template, value in lines:
        if value:
            click.echo(template.format(value))


@click.group("jobs", invoke_without_command=True)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many jobs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs_group(click_ctx: click.Context, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first (or delete / purge them)."""
    if click_ctx.invoked_subcommand is None:
        _list(click_ctx.find_object(Context), limit, as_json)


def _list(ctx: Context, limit: int, as_json: bool) -> None:
    found = ctx.client.store.list_jobs(limit)
    if as_json:
        echo_json([j.as_dict() for j in found])
        return
    if not found:
        click.echo("no jobs")
        return
    click.echo(f"{'JOB':<26} {'KIND':<11} {'STATE':<10} {'MODEL':<22} {'PREC':<5} {'DONE':>9} {'FAILED':>7} "
               f"{'CANCEL':>7} CREATED")
    for j in found:
        n = j.n_images if j.submit_complete else f"{j.n_enqueued}+"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_s))
        click.echo(f"{j.job_id:<26} {j.kind[:11]:<11} {j.state:<10} {j.model[:22]:<22} {j.precision:<5} "
                   f"{j.done:>5}/{n!s:<4}{j.failed:>7} {j.cancelled:>7} {created}")


@jobs_group.command("list")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many jobs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def list_jobs(ctx: Context, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first."""
    _list(ctx, limit, as_json)


@jobs_group.command("delete")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Also delete jobs that are still active (they are cancelled first).")
@pass_ctx
def delete(ctx: Context, job_ids: tuple[str, ...], force: bool) -> None:
    """Delete jobs: their records, results and payloads."""
    store = ctx.client.store
    for job_id in job_ids:
        job = store.record(job_id)  # unknown id: error
        if not job.terminal:
            if not force:
                raise click.UsageError(f"job {job_id} is {job.state}; cancel it first "
                                       f"(`trtbatch cancel {job_id}`) or use --force")
            closeout.cancel(store, job_id)
        store.delete(job_id)
        click.echo(f"deleted {job_id}")


@jobs_group.command("purge")
@click.option("--older-than", "older_than", default="7d", show_default=True, metavar="AGE",
              help="Delete ended jobs that finished longer ago than this (e.g. 90m, 12h, 7d).")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@pass_ctx
def purge(ctx: Context, older_than: str, dry_run: bool) -> None:
    """Delete ended jobs older than AGE, and forget index entries of jobs whose results expired."""
    cutoff = time.time() - _age_s(older_than)
    report: dict[str, Any] = jobs_lib.purge(ctx.client, cutoff, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    for job_id in report["deleted"]:
        click.echo(f"{verb} {job_id}")
    click.echo(f"{verb} {len(report['deleted'])} job(s); {report['expired']} expired index entr(y/ies) removed; "
               f"{report['kept_active']} active job(s) kept", err=True)


def _age_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = text[:-1], text[-1:].lower()
    if unit not in units or not value.replace(".", "", 1).isdigit():
        raise click.BadParameter(f"{text!r}: a number and a unit (s, m, h, d), e.g. 7d", param_hint="--older-than")
    return float(value) * units[unit]


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def cancel(ctx: Context, job_id: str, as_json: bool) -> None:
    """Cancel a job: it ends at once; every image not yet served gets a `cancelled` record."""
    state = closeout.cancel(ctx.client.store, job_id)
    st = ctx.client.store.status(job_id, reasons=0)
    if as_json:
        echo_json({"job_id": job_id, "state": state, "done": st.done, "failed": st.failed,
                   "cancelled": st.cancelled})
    else:
        click.echo(f"{job_id}: {state} ({st.done} ok, {st.failed} failed, {st.cancelled} cancelled)")


def register(group: click.Group) -> None:
    for cmd in (status, jobs_group, cancel):
        group.add_command(cmd)
