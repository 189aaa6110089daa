"""``trtbatch results``: export a job's per-image results."""

from __future__ import annotations

import sys

import click

from cli.util import Context, pass_ctx
from producer import export as export_lib


@click.command()
@click.argument("job_id")
@click.option("-f", "--format", "fmt", type=click.Choice(export_lib.EXPORT_FORMATS), default=None,
              help="Default: what the -o file's suffix names (.jsonl/.json, .csv, .parquet), else jsonl.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write here (atomically) instead of stdout; parquet needs it.")
@click.option("--dir", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write one JSON file per image instead, at DIR/<image path below the images' common "
                   "folder>.json (never outside DIR).")
@click.option("--failed", "failed_only", is_flag=True, help="Only the failed (and cancelled) images.")
@pass_ctx
def results(ctx: Context, job_id: str, fmt: str | None, output: str | None, out_dir: str | None,
            failed_only: bool) -> None:
    """Export a job's per-image results as JSONL, CSV or Parquet, or as one JSON file per image (--dir)."""
    if out_dir is not None:
        if output is not None or fmt is not None:
            raise click.UsageError("--dir writes one JSON file per image; it does not go with -o or -f")
        _results_dir(ctx, job_id, out_dir, failed_only)
        return
    fmt = export_lib.choose_format(fmt, output)
    if output is None:
        export_lib.export(ctx.client, job_id, fmt, sys.stdout, failed_only)
        return
    n, target = export_lib.export_file(ctx.client, job_id, fmt, output, failed_only)
    click.echo(f"wrote {n} records to {target}", err=True)


def _results_dir(ctx: Context, job_id: str, out_dir: str, failed_only: bool) -> None:
    report = export_lib.export_dir(ctx.client, job_id, out_dir, failed_only)
    where = (f"named by image path below {report.input_root}" if report.input_root
             else "named by full image path (the images share no folder)")
    click.echo(f"wrote {report.written} files under {report.root}, {where}", err=True)
    if report.renamed:
        index, path, name = report.renamed[0]
        click.echo(f"note: {len(report.renamed)} image(s) share a name with another and were written under "
                   f"another name, e.g. image {index} ({path!r}) -> {name}", err=True)
    for index, path, reason in report.refused[:5]:
        click.echo(f"warning: image {index} ({path!r}) not written: {reason}", err=True)
    if report.refused:
        click.echo(f"warning: {len(report.refused)} image(s) not written", err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(results)
