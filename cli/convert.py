"""``trtbatch convert``: make a model's ONNX forms (for the onnxruntime engine) on a capable worker."""

from __future__ import annotations

import sys

import click

from cli.util import Context, Progress, echo_json, pass_ctx
from producer import convert as convert_lib
from producer import jobs as jobs_lib


@click.command()
@click.option("-m", "--model", required=True, help="The model (or quantized model, NAME@int8-ptq) to convert.")
@click.option("--fp16/--no-fp16", default=True, show_default=True,
              help="Also make the FP16 form (ONNX Runtime's float16 converter) for the CUDA EP.")
@click.option("-i", "--images", "check_images", multiple=True,
              help="Check the conversion on these images (files, folders, manifests; up to 64). Default: seeded "
                   "random images in the model's input range.")
@click.option("--force", is_flag=True, help="Convert again even if the version already has these forms.")
@click.option("-w", "--wait", is_flag=True, help="Wait for the job and print what it published.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def convert(ctx: Context, model: str, fp16: bool, check_images: tuple[str, ...], force: bool, wait: bool,
            timeout: float | None, as_json: bool) -> None:
    """Convert a model version to ONNX (checked against the model's own outputs) for the onnxruntime engine."""
    client = ctx.client
    job_id = convert_lib.convert(client, convert_lib.ConvertOptions(model, fp16, check_images, force))
    if not wait:
        echo_json({"job_id": job_id}) if as_json else click.echo(job_id)
        return
    progress = Progress(enabled=False)
    final = jobs_lib.wait(client, job_id, on_progress=progress, timeout_s=timeout)
    job = final.job
    if as_json:
        echo_json(job.as_dict())
    elif final.state == "done":
        for form in job.conversions:
            check = form["check"]
            how = "already converted" if form.get("reused") else "converted"
            click.echo(f"{form['name']} ({form['version_id']}): {form['variant']}, {how}; relative L2 "
                       f"{check['rel_l2']:.3g}, top-1 agreement {check['top1_agreement'] * 100:.1f} % on "
                       f"{check['samples']} inputs")
    else:
        click.echo(f"{job_id}: {final.state}: {job.error}", err=True)
    if final.state != "done":
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(convert)
