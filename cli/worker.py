"""``trtbatch worker`` (start workers on this node) and ``trtbatch workers`` (the fleet view)."""

from __future__ import annotations

import sys
import time

import click

from cli.util import Context, echo_json, pass_ctx
from common.errors import ConfigError


@click.command()
@click.option("-d", "--device", default="cpu", show_default=True, envvar="TRTBATCH_DEVICE",
              help="cpu | gpu:N | gpu:N,M | gpu:all (one worker process per GPU).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per predictor (CPU workers); default: all cores.")
@click.option("--decode-threads", type=click.IntRange(min=1), default=None, help="Image decoding threads.")
@click.option("--slots", type=click.IntRange(min=1, max=8), default=None,
              help="Pipeline slots per device (default 2: one decodes while one infers).")
@click.option("--warm", multiple=True, metavar="MODEL[:PREC[:BATCH]]", help="Build these predictors first.")
@click.option("-Q", "--queue", "queues", multiple=True, help="Also listen on this queue (advanced).")
@click.option("-n", "--name", help="Worker name (default <device>-<launcher pid>@<host>: unique per launch).")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
              help="Log level of the worker processes.")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Prometheus port (GPU i: port + i); default: TRTBATCH_METRICS_PORT, 0 = off.")
@click.option("--check", is_flag=True, help="Health check: exit 0 only if this node's worker(s) of this Redis "
              "(and --name) are alive, heartbeating and reach Redis.")
@pass_ctx
def worker(ctx: Context, device: str, threads: int | None, decode_threads: int | None, slots: int | None,
           warm: tuple[str, ...], queues: tuple[str, ...], name: str | None, loglevel: str,
           metrics_port: int | None, check: bool) -> None:
    """Start workers on this node (runs until SIGTERM/Ctrl-C: finishes current batches first)."""
    if check:
        _health_check(ctx, name)
    from workers.process.launcher import launch

    args = _worker_args(loglevel, threads, decode_threads, slots, warm, queues)
    if ctx.settings.uses_embedded_redis:
        ctx.client.url  # noqa: B018  # start the embedded server before the workers look for it
    port = ctx.settings.metrics_port if metrics_port is None else metrics_port
    sys.exit(launch(device, name, args, port))


def _health_check(ctx: Context, name: str | None) -> None:
    from workers.process.health import check as health_check

    healthy, lines = health_check(ctx.settings, name)
    for line in lines:
        click.echo(line, err=not healthy)
    sys.exit(0 if healthy else 1)


def _worker_args(loglevel: str, threads: int | None, decode_threads: int | None, slots: int | None,
                 warm: tuple[str, ...], queues: tuple[str, ...]) -> list[str]:
    """The command line of each worker process (workers/process/main.py); refuses a bad --warm."""
    from workers.process.warm import WarmRequest

    args = ["--loglevel", loglevel]
    for flag, value in (("--threads", threads), ("--decode-threads", decode_threads), ("--slots", slots)):
        if value:
            args += [flag, str(value)]
    for entry in warm:
        try:
            WarmRequest.parse(entry)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        args += ["--warm", entry]
    for q in queues:
        args += ["--queues", q]
    return args


def _gpu_text(w) -> str:
    if w.gpu_index is None:
        return f"{w.cpu_threads} threads"
    mem = ""
    if w.gpu_memory_total_mb:
        mem = f" {w.gpu_memory_used_mb}/{w.gpu_memory_total_mb} MiB"
    return f"{w.gpu_name}{mem}"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the live workers as a JSON list instead of text.")
@pass_ctx
def workers(ctx: Context, as_json: bool) -> None:
    """List live workers (a worker that stops heartbeating drops out after heartbeat_ttl_s)."""
    live = ctx.client.live_workers()
    if as_json:
        echo_json([w.as_dict() for w in live])
        return
    if not live:
        click.echo("no live workers")
        return
    now = time.time()
    for w in sorted(live, key=lambda x: x.name):
        click.echo(f"{w.name}  [{w.state}]  host {w.host} pid {w.pid}  {w.device} ({_gpu_text(w)})  "
                   f"seen {now - w.last_seen_s:.1f}s ago  {w.images_per_s:.1f} img/s (1 min)")
        engines = ", ".join(f"{name} {v}" for name, v in (("paddle", w.paddle_version),
                                                          ("onnxruntime", w.ort_version)) if v)
        click.echo(f"    serves {', '.join(w.capabilities)}   {engines or 'no engine'}"
                   f"{'   TensorRT ' + w.trt_version if w.trt_version else '   no TensorRT'}")
        for slot in w.slots:
            preds = ", ".join(f"{p['version']}/{p['backend']}/{p['precision']}" for p in slot.predictors)
            current = slot.current_batch or "idle"
            click.echo(f"    slot pid {slot.pid}: {current}; predictors: {preds or 'none'}"
                       + (f"; last error: {slot.last_error}" if slot.last_error else ""))


def register(group: click.Group) -> None:
    group.add_command(worker)
    group.add_command(workers)
