"""The real ``trtbatch`` entry point: a user mistake exits non-zero with one short error line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, RedisServer, image_bytes, write

ENTRY = "from cli import main; main()"


@pytest.fixture()
def cli_env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTBATCH_")}
    (tmp_path / "models").mkdir()
    env.update(TRTBATCH_REDIS_URL=redis_server.url, TRTBATCH_MODEL_REPO=str(tmp_path / "models"),
               TRTBATCH_CACHE_DIR=str(tmp_path / "cache"), TRTBATCH_STATE_DIR=str(tmp_path / "state"),
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@pytest.fixture()
def image(tmp_path: Path) -> str:
    return str(write(tmp_path / "img.png", image_bytes("L", (32, 32))))


def trtbatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(REPO_ROOT), check=False)


def assert_one_error(out: subprocess.CompletedProcess[str], expected: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, out.stderr
    assert expected in errors[0], out.stderr
    assert len(errors[0]) < 400
    return errors[0]


def assert_only_one_line(out: subprocess.CompletedProcess[str], expected: str) -> None:
    """trtbatch's own errors: exactly one line on stderr."""
    line = assert_one_error(out, expected)
    assert out.stderr.strip().splitlines() == [line]
    assert line.startswith("error: ")


def test_unknown_model(cli_env: dict[str, str], image: str) -> None:
    out = trtbatch(cli_env, "submit", "-m", "nosuch", image)
    assert_only_one_line(out, "model 'nosuch' is not published to this Redis")


def test_model_from_trtbatch_model_variable(cli_env: dict[str, str], image: str) -> None:
    out = trtbatch({**cli_env, "TRTBATCH_MODEL": "fromenv"}, "submit", image)
    assert_only_one_line(out, "model 'fromenv' is not published")


def test_missing_path(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = trtbatch(cli_env, "submit", "-m", "digits", str(tmp_path / "missing.png"))
    assert_only_one_line(out, f"no such file or directory: {tmp_path / 'missing.png'}")
    out = trtbatch(cli_env, "submit", "-m", "digits", str(tmp_path / "*.jpg"))
    assert_only_one_line(out, "no file matches")


@pytest.mark.parametrize("command", ["status", "results", "cancel"])
def test_unknown_job(cli_env: dict[str, str], command: str) -> None:
    out = trtbatch(cli_env, command, "20990101-000000-deadbeef")
    assert_only_one_line(out, "no job '20990101-000000-deadbeef' (unknown id, or its results expired)")


def test_unknown_trtbatch_variable(cli_env: dict[str, str]) -> None:
    out = trtbatch({**cli_env, "TRTBATCH_REDIS_URI": "redis://elsewhere:6379/0"}, "jobs")
    assert_only_one_line(out, "unknown environment variable TRTBATCH_REDIS_URI")


def test_malformed_setting(cli_env: dict[str, str]) -> None:
    out = trtbatch({**cli_env, "TRTBATCH_PIPELINE_SLOTS": "-2"}, "jobs")
    assert_only_one_line(out, "setting pipeline_slots='-2'")


@pytest.mark.parametrize(("args", "expected"), [
    (["-m", "digits", "-p", "fp64"], "Invalid value for '-p' / '--precision': 'fp64' is not one of"),
    (["-m", "digits", "--backend", "tpu"], "Invalid value for '--backend'"),
    (["-m", "digits", "--batch-size", "-3"], "Invalid value for '-b' / '--batch-size': -3 is not in the range x>=1"),
    (["-m", "digits", "--top-k", "0"], "Invalid value for '-k' / '--top-k'"),
    ([], "--model is required (or TRTBATCH_MODEL)"),
])
def test_usage_errors(cli_env: dict[str, str], image: str, args: list[str], expected: str) -> None:
    out = trtbatch(cli_env, "submit", *args, image)
    assert_one_error(out, expected)
    assert len([line for line in out.stderr.splitlines() if line.strip()]) == 1, out.stderr


@pytest.mark.parametrize("args", [["--help"], ["submit", "--help"], ["-h"]])
def test_help(cli_env: dict[str, str], args: list[str]) -> None:
    out = trtbatch(cli_env, *args)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and out.stderr == ""
    if "submit" in args:
        assert "--precision" in out.stdout and "--model" in out.stdout
    else:
        assert "submit" in out.stdout and "status" in out.stdout
