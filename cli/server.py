"""``trtbatch server status | start | stop``: the embedded Redis server."""

from __future__ import annotations

import click

from cli.util import Context, echo_json, pass_ctx
from common.embedded import EmbeddedRedis
from common.errors import ConfigError
from common.redisconn import redact_url


@click.group()
def server() -> None:
    """The embedded Redis server used when TRTBATCH_REDIS_URL is unset."""


def _embedded(ctx: Context) -> EmbeddedRedis:
    if not ctx.settings.uses_embedded_redis:
        raise ConfigError(f"TRTBATCH_REDIS_URL is set ({redact_url(ctx.settings.redis_url or '')}); "
                          "the embedded server is not in use")
    return EmbeddedRedis(ctx.settings.state_dir)


@server.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Show whether the embedded server runs, where, and its memory."""
    info = _embedded(ctx).status()
    if as_json:
        echo_json(info)
    elif info["running"]:
        click.echo(f"running  pid {info['pid']}  {info['url']}  redis {info['version']}  "
                   f"{info['used_memory'] / 1e6:.1f} MB  up {info['uptime_s']}s")
    else:
        click.echo(f"not running ({info['dir']})")


@server.command()
@pass_ctx
def start(ctx: Context) -> None:
    """Start the embedded server (commands start it on demand anyway)."""
    click.echo(_embedded(ctx).ensure_running())


@server.command()
@pass_ctx
def stop(ctx: Context) -> None:
    """Stop the embedded server (its append-only file keeps the jobs)."""
    click.echo("stopped" if _embedded(ctx).stop() else "not running")


def register(group: click.Group) -> None:
    group.add_command(server)
