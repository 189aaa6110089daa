"""``trtbatch status | results | jobs | cancel``."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

import click

from cli.util import Context, echo_json, pass_ctx
from common.errors import InputError
from producer import jobs as jobs_lib


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(ctx: Context, job_id: str, as_json: bool) -> None:
    """Show a job's state, counts, failure reasons and who can serve it."""
    st = jobs_lib.status(ctx.client, job_id)
    if as_json:
        echo_json(st)
        return
    total = f"{st['n_images']}" + ("" if st["submit_complete"] else "+ (still submitting)")
    click.echo(f"job        {job_id}\nstate      {st['state']}\nmodel      {st['model']} ({st['version_id']}) "
               f"{st['precision']} on engine {st['engine']}, backend {st['target']}\n"
               f"images     {total}: {st['done']} ok, {st['failed']} failed, {st['pending']} pending")
    if st.get("elapsed_s") is not None:
        click.echo(f"elapsed    {st['elapsed_s']:.1f}s ({st.get('images_per_s', 0):.1f} img/s)")
    if st.get("batches_dead"):
        click.echo(f"dead       {st['batches_dead']} batch(es) dead-lettered")
    for reason, count in st["error_reasons"].items():
        click.echo(f"  {count} x {reason}")
    if st.get("served_by"):
        click.echo(f"served by  {', '.join(st['served_by'])}")
    if st.get("unservable"):
        click.echo(f"warning    {st['unservable']}")


@click.command()
@click.argument("job_id")
@click.option("-f", "--format", "fmt", type=click.Choice(jobs_lib.EXPORT_FORMATS), default="jsonl",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write here (atomically) instead of stdout.")
@click.option("--dir", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write one JSON file per image instead, at DIR/<image path>.json (never outside DIR).")
@click.option("--failed", "failed_only", is_flag=True, help="Only the failed images.")
@pass_ctx
def results(ctx: Context, job_id: str, fmt: str, output: str | None, out_dir: str | None, failed_only: bool) -> None:
    """Export a job's per-image results as JSONL or CSV, or as one JSON file per image (--dir)."""
    if out_dir is not None:
        if output is not None or fmt != "jsonl":
            raise click.UsageError("--dir writes one JSON file per image; it does not go with -o or -f")
        _results_dir(ctx, job_id, out_dir, failed_only)
        return
    if output is None:
        jobs_lib.export(ctx.client, job_id, fmt, sys.stdout, failed_only)
        return
    target = os.path.abspath(output)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise InputError(f"output folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".trtbatch-", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            n = jobs_lib.export(ctx.client, job_id, fmt, fh, failed_only)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    click.echo(f"wrote {n} records to {target}", err=True)


def _results_dir(ctx: Context, job_id: str, out_dir: str, failed_only: bool) -> None:
    report = jobs_lib.export_dir(ctx.client, job_id, out_dir, failed_only)
    click.echo(f"wrote {report.written} files under {report.root}", err=True)
    if report.renamed:
        index, path, name = report.renamed[0]
        click.echo(f"note: {len(report.renamed)} image(s) share a name with another and were written under "
                   f"another name, e.g. image {index} ({path!r}) -> {name}", err=True)
    for index, path, reason in report.refused[:5]:
        click.echo(f"warning: image {index} ({path!r}) not written: {reason}", err=True)
    if report.refused:
        click.echo(f"warning: {len(report.refused)} image(s) not written", err=True)
        sys.exit(1)


@click.command("jobs")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def list_jobs(ctx: Context, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first."""
    jobs = ctx.client.store.list_jobs(limit)
    if as_json:
        echo_json([j.as_dict() for j in jobs])
        return
    if not jobs:
        click.echo("no jobs")
        return
    click.echo(f"{'JOB':<26} {'STATE':<10} {'MODEL':<22} {'PREC':<5} {'DONE':>8} {'FAILED':>7} CREATED")
    for j in jobs:
        n = j.n_images if j.submit_complete else f"{j.n_enqueued}+"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_s))
        click.echo(f"{j.job_id:<26} {j.state:<10} {j.model[:22]:<22} {j.precision:<5} "
                   f"{j.done:>5}/{n!s:<3} {j.failed:>6} {created}")


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def cancel(ctx: Context, job_id: str, as_json: bool) -> None:
    """Cancel a job: queued batches are skipped and their images marked cancelled."""
    state = ctx.client.store.cancel(job_id)
    if as_json:
        echo_json({"job_id": job_id, "state": state})
    else:
        click.echo(f"{job_id}: {state}")


def register(group: click.Group) -> None:
    for cmd in (status, results, list_jobs, cancel):
        group.add_command(cmd)
