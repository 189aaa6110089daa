"""``trtbatch submit``: send images for inference."""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from cli.util import Context, Poller, Progress, echo_json, pass_ctx, reason_lines, warn_unservable
from common.routing import ENGINE_TARGETS, PRECISIONS, TARGETS
from producer import jobs as jobs_lib
from producer import submit as submit_lib

#: options that define a job: ``--resume`` continues the job as it was submitted, so they cannot go with it
JOB_DEFINING = ("paths", "model", "precision", "target", "engine", "batch_size", "top_k", "raw_outputs")


@click.command()
@click.argument("paths", nargs=-1)
@click.option("-m", "--model", envvar="TRTBATCH_MODEL", help="Model name in the repository.")
@click.option("-p", "--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Numeric precision the model runs in (int8: a quantized version or calibration tables).")
@click.option("--backend", "target", type=click.Choice(TARGETS), default="any", show_default=True,
              help="Where to run: any capable worker, or only cpu / gpu (native CUDA; ONNX Runtime's CUDA EP) / "
                   "trt (TensorRT).")
@click.option("-e", "--engine", type=click.Choice(ENGINE_TARGETS), default="any", show_default=True,
              help="What runs the model: Paddle Inference, ONNX Runtime (the model's ONNX form, made by "
                   "`trtbatch convert`), or any engine that can.")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch, at most the model's max_batch_size (default: the default_batch_size "
                   "setting, capped by max_batch_size).")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=None,
              help="Labels per image (default: the model's manifest).")
@click.option("--raw-outputs", is_flag=True, help="Also store raw model outputs in each record.")
@click.option("--resume", "resume_id", metavar="JOB", help="Finish sending an interrupted submission, as it "
              "was submitted (no PATHS or job options with it).")
@click.option("-w", "--wait", is_flag=True, help="Wait with a progress bar; exit 1 if any image failed.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --wait: give up waiting after this many seconds (the job goes on).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
@click.pass_context
def submit(click_ctx: click.Context, ctx: Context, paths: tuple[str, ...], model: str | None, precision: str,
           target: str, engine: str, batch_size: int | None, top_k: int | None, raw_outputs: bool,
           resume_id: str | None, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Submit images: files, directories (recursive), globs, or CSV/JSONL manifests."""
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    progress = Progress(enabled=wait and not as_json)
    if resume_id:
        _check_resume(click_ctx)
        job_id = resume_id
        send = lambda: submit_lib.resume(ctx.client, job_id)  # noqa: E731
    else:
        if not model:
            raise click.UsageError("--model is required (or TRTBATCH_MODEL)")
        if not paths:
            raise click.UsageError("give at least one PATH")
        opts = submit_lib.SubmitOptions(paths=paths, model=model, precision=precision, target=target,
                                        batch_size=batch_size or 0, top_k=top_k or 0, include_outputs=raw_outputs,
                                        engine=engine)
        job_id = submit_lib.new_job_id()
        send = lambda: submit_lib.submit(ctx.client, opts, job_id=job_id, on_warning=_warn)  # noqa: E731
    try:
        _run(ctx, job_id, send, progress, wait, timeout, as_json)
    except KeyboardInterrupt:
        progress.done()
        _interrupted(ctx, job_id)
        sys.exit(130)
    finally:
        progress.done()


def _check_resume(click_ctx: click.Context) -> None:
    given = [name for name in JOB_DEFINING if click_ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("PATHS" if n == "paths" else "--" + n.replace("_", "-") for n in given)
        raise click.UsageError(f"--resume continues a job as it was submitted; it does not take {flags}. "
                               "Submit a new job to change them.")


def _run(ctx: Context, job_id: str, send: Any, progress: Progress, wait: bool, timeout: float | None,
         as_json: bool) -> None:
    if wait and not as_json:
        click.echo(f"job {job_id}", err=True)  # first, so an interrupted wait still names it
    if wait:
        with Poller(ctx.client, job_id, progress):
            send()
    else:
        send()
    status = jobs_lib.status(ctx.client, job_id)
    if not wait:
        if as_json:
            echo_json({"job_id": job_id, "state": status["state"], "unservable": status.get("unservable")})
        else:
            click.echo(job_id)
            warn_unservable(status, ctx.settings.unservable_grace_s)
        return
    if not as_json:
        warn_unservable(status, ctx.settings.unservable_grace_s)
    final = jobs_lib.wait(ctx.client, job_id, on_progress=progress, timeout_s=timeout)
    progress.done()
    _report(ctx, job_id, final, as_json)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _report(ctx: Context, job_id: str, final: Any, as_json: bool) -> None:
    acc = jobs_lib.accuracy(ctx.client, job_id)
    if as_json:
        echo_json({"job_id": job_id, **final.as_dict(), "accuracy": acc})
    else:
        cancelled = f", {final.cancelled} cancelled" if final.cancelled else ""
        click.echo(f"{job_id}: {final.state}, {final.done} ok, {final.failed} failed{cancelled}")
        for line in reason_lines(final.error_reasons, final.failed + final.cancelled, limit=5):
            click.echo(line, err=True)
        if acc:
            click.echo(format_accuracy(acc))
    if final.failed or final.state != "done":
        sys.exit(1)


def format_accuracy(acc: dict[str, Any], max_classes: int = 20) -> str:
    """The accuracy summary of a labelled job: overall, then per class (the worst first past 20)."""
    failed = f", {acc['failed']} failed counted wrong" if acc["failed"] else ""
    lines = [f"accuracy   {acc['accuracy']:.4f} ({acc['correct']}/{acc['labelled']} labelled images{failed})"]
    classes = list(acc["per_class"].items())
    if len(classes) > max_classes:
        classes = sorted(classes, key=lambda kv: kv[1]["accuracy"] or 0.0)[:max_classes]
        lines.append(f"  the {max_classes} worst of {len(acc['per_class'])} classes:")
    for label, c in classes:
        lines.append(f"  {label:<12} {c['accuracy']:.4f} ({c['correct']}/{c['labelled']})")
    return "\n".join(lines)


def _interrupted(ctx: Context, job_id: str) -> None:
    """What Ctrl-C leaves behind, and the exact commands to go on."""
    try:
        job = ctx.client.store.record(job_id)
    except Exception:  # nothing was created (interrupted while checking inputs) or Redis is gone
        click.echo(f"interrupted: job {job_id} was not created; nothing is running", err=True)
        return
    if job.terminal:
        click.echo(f"interrupted: job {job_id} had already ended ({job.state}); see `trtbatch status {job_id}`",
                   err=True)
        return
    if job.submit_complete:
        sent = f"all {job.n_images} images were sent"
    else:
        sent = f"{job.n_enqueued} images were sent, the rest not yet"
    click.echo(f"interrupted: job {job_id} keeps running on the workers ({sent}).\n"
               + ("" if job.submit_complete else f"  send the rest:  trtbatch submit --resume {job_id} --wait\n")
               + f"  watch it:       trtbatch status {job_id}\n"
               + ("" if not job.submit_complete else f"  wait again:     trtbatch submit --resume {job_id} --wait\n")
               + f"  stop it:        trtbatch cancel {job_id}", err=True)


def register(group: click.Group) -> None:
    group.add_command(submit)
