"""``trtbatch status | jobs | cancel``."""

from __future__ import annotations

import time

import click

from cli.util import Context, echo_json, pass_ctx
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
    for cmd in (status, list_jobs, cancel):
        group.add_command(cmd)
