"""``trtbatch demo``: train digits if needed, start a CPU worker, classify the held-out digits."""

from __future__ import annotations

import os
import sys

import click

from cli.util import Context, Progress, echo_json, pass_ctx


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def demo(ctx: Context, as_json: bool) -> None:
    """Run a real batch end to end: Redis -> Celery worker -> Paddle -> results."""
    from tools.demo import run_demo

    progress = Progress(enabled=not as_json)
    say = (lambda _msg: None) if as_json else click.echo
    result = run_demo(ctx.client, say, on_progress=progress)
    progress.done()
    if as_json:
        echo_json(result)
    else:
        click.echo(f"job {result['job_id']}: {result['state']}, {result['done']} ok, {result['failed']} failed")
        click.echo("some predictions (image -> top-1 label, score; true label):")
        for row in result["examples"]:
            top = row["top_k"][0] if row.get("top_k") else {"label": "-", "score": 0.0}
            click.echo(f"  {os.path.basename(row['path'])} -> {top['label']} ({top['score']:.3f}); "
                       f"true {row.get('label')}  [{row['worker']}, {row['device']}, {row['precision']}]")
        acc = result["accuracy"]
        click.echo(f"accuracy: {acc['correct']}/{acc['labelled']} = {acc['accuracy'] * 100:.2f}%")
    if result["failed"] or result["state"] != "done":
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(demo)
