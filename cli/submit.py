"""``trtbatch submit``: send images for inference."""

from __future__ import annotations

import sys

import click

from cli.util import Context, Poller, Progress, echo_json, pass_ctx
from common.routing import ENGINE_TARGETS, PRECISIONS, TARGETS
from producer import jobs as jobs_lib
from producer import submit as submit_lib


@click.command()
@click.argument("paths", nargs=-1)
@click.option("-m", "--model", envvar="TRTBATCH_MODEL", help="Model name in the repository.")
@click.option("-p", "--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--backend", "target", type=click.Choice(TARGETS), default="any", show_default=True,
              help="Where to run: any capable worker, or only cpu / gpu (native CUDA; ONNX Runtime's CUDA EP) / "
                   "trt (TensorRT).")
@click.option("-e", "--engine", type=click.Choice(ENGINE_TARGETS), default="any", show_default=True,
              help="What runs the model: Paddle Inference, ONNX Runtime (the model's ONNX form, made by "
                   "`trtbatch convert`), or any engine that can.")
@click.option("-b", "--batch-size", type=int, default=0, help="Images per batch (default: setting, capped "
              "by the model's max_batch_size).")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=None, help="Labels per image.")
@click.option("--raw-outputs", is_flag=True, help="Also store raw model outputs in each record.")
@click.option("--resume", "resume_id", metavar="JOB", help="Finish sending an interrupted submission.")
@click.option("-w", "--wait", is_flag=True, help="Wait with a progress bar; exit 1 if any image failed.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def submit(ctx: Context, paths: tuple[str, ...], model: str | None, precision: str, target: str, engine: str,
           batch_size: int, top_k: int | None, raw_outputs: bool, resume_id: str | None, wait: bool,
           timeout: float | None, as_json: bool) -> None:
    """Submit images: files, directories (recursive), globs, or CSV/JSONL manifests."""
    if batch_size < 0:
        raise click.BadParameter("must be positive", param_hint="--batch-size")
    client = ctx.client
    progress = Progress(enabled=wait and not as_json)
    if resume_id:
        job_id = resume_id
        with Poller(client, job_id, progress) if wait else _null():
            submit_lib.resume(client, job_id)
    else:
        if not model:
            raise click.UsageError("--model is required (or TRTBATCH_MODEL)")
        if not paths:
            raise click.UsageError("give at least one PATH")
        opts = submit_lib.SubmitOptions(paths=paths, model=model, precision=precision, target=target,
                                        batch_size=batch_size, top_k=top_k or 0, include_outputs=raw_outputs,
                                        engine=engine)
        job_id = submit_lib.new_job_id()
        with Poller(client, job_id, progress) if wait else _null():
            submit_lib.submit(client, opts, job_id=job_id)
    if not wait:
        if as_json:
            echo_json({"job_id": job_id})
        else:
            click.echo(job_id)
            _warn_unservable(client, job_id)
        return
    _wait_and_report(client, job_id, progress, timeout, as_json)


def _warn_unservable(client, job_id: str) -> None:
    status = jobs_lib.status(client, job_id)
    if status.get("unservable"):
        click.echo(f"warning: {status['unservable']}", err=True)


def _wait_and_report(client, job_id: str, progress: Progress, timeout: float | None, as_json: bool) -> None:
    status = jobs_lib.status(client, job_id)
    if status.get("unservable") and not as_json:
        click.echo(f"warning: {status['unservable']}", err=True)
    final = jobs_lib.wait(client, job_id, on_progress=progress, timeout_s=timeout)
    progress.done()
    if as_json:
        echo_json({"job_id": job_id, **final.as_dict()})
    else:
        click.echo(f"{job_id}: {final.state}, {final.done} ok, {final.failed} failed")
        for reason, count in list(final.error_reasons.items())[:5]:
            click.echo(f"  {count} x {reason}", err=True)
    if final.failed or final.state != "done":
        sys.exit(1)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def register(group: click.Group) -> None:
    group.add_command(submit)
