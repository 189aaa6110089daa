"""``trtbatch calibrate``: make INT8 work for a model (offline PTQ or TensorRT calibration)."""

from __future__ import annotations

import sys

import click

from cli.util import Context, Progress, echo_json, pass_ctx
from common.calibration import METHODS, PTQ_ALGOS
from producer import calibrate as calib_lib
from producer import jobs as jobs_lib
from producer.reports import format_report, report_of


@click.command()
@click.option("-m", "--model", required=True, help="The FP32 model to calibrate.")
@click.option("-i", "--images", multiple=True, required=True,
              help="Calibration images: files, folders, globs or manifests (repeatable).")
@click.option("--method", type=click.Choice(METHODS), default="ptq", show_default=True,
              help="ptq: Paddle offline quantization (serves CPU and TensorRT); trt: TensorRT calibration table.")
@click.option("--algo", type=click.Choice(PTQ_ALGOS), default="hist", show_default=True, help="PTQ algorithm.")
@click.option("-e", "--engine", type=click.Choice(["paddle", "onnxruntime"]), default="paddle", show_default=True,
              help="trt method: whose TensorRT table - Paddle-TensorRT's (a TensorRT worker), or ONNX Runtime's "
                   "calibrator on the model's ONNX form (any ONNX Runtime worker) for the TensorRT EP.")
@click.option("-n", "--samples", type=click.IntRange(min=0), default=0,
              help="Calibration images to use (default: 100 for ptq, 500 for trt).")
@click.option("--eval", "eval_paths", multiple=True, help="Evaluation images (a labelled manifest gives accuracy).")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per calibration batch (capped at the model's max batch size).")
@click.option("--threshold", type=float, default=1.0, show_default=True, help="Flag accuracy drops above this (pt).")
@click.option("-w", "--wait", is_flag=True, help="Wait for the job to finish and print its result.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --wait: give up waiting after this many seconds (the job keeps running).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def calibrate(ctx: Context, model: str, images: tuple[str, ...], method: str, algo: str, engine: str, samples: int,
              eval_paths: tuple[str, ...], batch_size: int, threshold: float, wait: bool, timeout: float | None,
              as_json: bool) -> None:
    """Send a calibration job to one capable worker; with --wait, show its report."""
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    client = ctx.client
    opts = calib_lib.CalibrateOptions(model=model, images=images, method=method, algo=algo, samples=samples,
                                      eval_paths=eval_paths, batch_size=batch_size, threshold_pt=threshold,
                                      engine=engine)
    job_id = calib_lib.calibrate(client, opts)
    if not wait:
        echo_json({"job_id": job_id}) if as_json else click.echo(job_id)
        return
    progress = Progress(enabled=not as_json)
    final = jobs_lib.wait(client, job_id, on_progress=progress, timeout_s=timeout)
    progress.done()
    meta = final.meta
    out = {"job_id": job_id, "state": final.state, "error": meta.get("error"),
           "result_name": meta.get("result_name"), "result_version": meta.get("result_version"),
           "warnings": list(meta.get("warnings") or ())}
    if final.state == "done" and method == "ptq" and out["result_version"]:
        out["local_path"] = str(calib_lib.pull_version(client, out["result_name"], out["result_version"]))
    out["report"] = report_of(client, out["result_version"]) if out["result_version"] else None
    if as_json:
        echo_json(out)
    else:
        _print(out)
    if final.state != "done":
        sys.exit(1)


def _print(out: dict) -> None:
    if out["state"] != "done":
        click.echo(f"{out['job_id']}: {out['state']}: {out['error']}", err=True)
        return
    click.echo(f"{out['job_id']}: done -> {out['result_name']} ({out['result_version']})")
    for warning in out["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if out["report"]:
        click.echo(format_report(out["report"]))


def register(group: click.Group) -> None:
    group.add_command(calibrate)
