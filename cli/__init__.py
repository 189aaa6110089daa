"""The ``trtbatch`` command line: a click group; each command lives in its own module.

Errors trtbatch raises on purpose (and Redis connection failures) print one line and exit 2 (3 when
``--wait --timeout`` passes: the job keeps running); there is no traceback for a user mistake. The
engines' own chatter (Paddle's C++ glog lines, their Python warnings) is kept out of the output
unless ``-v`` is given (``quiet_engines``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click
import redis

from cli.util import Context
from common import __version__
from common.config import Settings
from common.errors import TrtbatchError

EXIT_ERROR = 2
#: Modules whose warnings (DeprecationWarning, UserWarning, ...) speak to their own developers, not to
#: someone running a trtbatch command: Paddle, paddle2onnx, ONNX, ONNX Runtime.
ENGINE_MODULES = r"(paddle|paddle2onnx|onnx|onnxruntime|onnxconverter_common)(\.|$)"


def quiet_engines(verbose: int) -> None:
    """Keep the engines' noise out of CLI output; call before anything imports Paddle.

    Paddle reads ``GLOG_minloglevel`` once, when its C++ library loads: 2 keeps only its errors (no
    ``I1202 ...`` / ``W1202 ...`` lines); ``-vv`` lets everything through. A value the operator set wins.
    Warnings raised in the engines' modules, and deprecation warnings anywhere (Paddle attributes its
    deprecations to the caller), are ignored unless ``-v``."""
    os.environ.setdefault("GLOG_minloglevel", "0" if verbose >= 2 else "2")
    if verbose:
        return
    warnings.filterwarnings("ignore", module=ENGINE_MODULES)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="trtbatch")
@click.option("--redis-url", envvar="TRTBATCH_REDIS_URL", default=None,
              help="Redis URL (redis://, rediss://, unix://). Unset: the embedded server.")
@click.option("--model-repo", envvar="TRTBATCH_MODEL_REPO", default=None, help="Model repository folder.")
@click.option("-v", "--verbose", count=True,
              help="More logging (-v info and the engines' Python warnings, -vv debug and Paddle's glog lines).")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, model_repo: str | None, verbose: int) -> None:
    """trtbatch: distributed batch inference for PaddlePaddle models in FP32/FP16/INT8."""
    quiet_engines(verbose)
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(redis_url=redis_url, model_repo=model_repo)
    ctx.obj = Context(settings)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from cli import bench, calibrate, convert, jobs, models, results, retry, server, submit, worker
    from cli import demo as demo_cmd

    for module in (submit, jobs, results, retry, models, calibrate, convert, worker, server, demo_cmd, bench):
        module.register(cli)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line, like every other error (no usage dump)
        where = f"{exc.ctx.command_path}: " if exc.ctx else ""
        click.echo(f"error: {where}{exc.format_message()} (see --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except TrtbatchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", EXIT_ERROR))
    except redis.RedisError as exc:
        click.echo(f"error: Redis: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
