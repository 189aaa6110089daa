"""The CLI keeps the engines' chatter out of its output: no Paddle glog lines (``I1202 12:00:00.123 ...``),
no Python warnings from Paddle, unless ``-v`` / ``-vv`` asks for them. Real commands that import Paddle
run in a subprocess through the real entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import cli
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

ENTRY = "from cli import main; main()"
GLOG_LEVEL = "GLOG_minloglevel"  # Paddle's own spelling
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)


def trtbatch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRTBATCH_", "GLOG_", "FLAGS_")) and k != "PYTHONWARNINGS"}
    env.update(TRTBATCH_MODEL_REPO=str(tmp_path / "models"), TRTBATCH_STATE_DIR=str(tmp_path / "state"),
               TRTBATCH_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path), check=False)


def test_models_make_prints_no_glog_lines_nor_warnings(tmp_path: Path) -> None:
    """Training digits runs Paddle's executor (a glog INFO line) and BatchNorm (a UserWarning)."""
    res = trtbatch(tmp_path, "models", "make", "digits", "--epochs", "1")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr
    assert res.stdout.startswith(f"made digits in {tmp_path / 'models' / 'digits'}")

    loud = trtbatch(tmp_path, "-vv", "models", "make", "mobilenet_v2")  # -vv: everything, glog included
    assert loud.returncode == 0, loud.stderr
    assert GLOG_LINE.search(loud.stderr), loud.stderr  # the check above would have seen them


@pytest.mark.parametrize(("verbose", "shown"), [(0, ["ours", "not paddle"]),
                                               (1, ["engine", "deprecated", "ours", "not paddle"])])
def test_quiet_engines_filters_warnings_unless_verbose(monkeypatch: pytest.MonkeyPatch, verbose: int,
                                                       shown: list[str]) -> None:
    monkeypatch.delenv(GLOG_LEVEL, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_engines(verbose)
        warnings.warn_explicit("engine", UserWarning, "norm.py", 1, module="paddle.nn.layer.norm")
        warnings.warn_explicit("deprecated", DeprecationWarning, "x.py", 1, module="tools.modelmake")
        warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="tools.modelmake")
        warnings.warn_explicit("not paddle", UserWarning, "x.py", 1, module="paddleocr_like")
    assert [str(w.message) for w in caught] == shown
    assert os.environ[GLOG_LEVEL] == "2"
