"""``trtbatch worker --device``: which worker processes start, with which names and environment."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from common.errors import ConfigError
from workers.process.launcher import parse_devices, worker_specs

HOST = socket.gethostname()
PID = os.getpid()  # the launcher's


@pytest.mark.parametrize(("spec", "expected"), [
    ("cpu", [("cpu", None)]),
    ("gpu:0", [("gpu", 0)]),
    ("gpu:3", [("gpu", 3)]),
    ("gpu:0,1", [("gpu", 0), ("gpu", 1)]),
    ("gpu:2,0", [("gpu", 2), ("gpu", 0)]),
])
def test_parse_devices(spec: str, expected: list[tuple[str, int | None]]) -> None:
    assert parse_devices(spec) == expected


@pytest.mark.parametrize("spec", ["", "tpu", "gpu", "GPU:0", "cpu:0", "gpu:", "gpu:x", "gpu:0,", "gpu:0;1",
                                  "gpu:1.5", "gpu:-1", "gpu:0,0", "gpu:1,2,1"])
def test_bad_device_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match="--device"):
        parse_devices(spec)


def test_gpu_all_uses_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert parse_devices("gpu:all") == [("gpu", 0), ("gpu", 1)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="no GPU visible"):
        parse_devices("gpu:all")


def test_cpu_worker_spec() -> None:
    (spec,) = worker_specs("cpu", None, ["--threads", "2"])
    assert (spec.device, spec.gpu_index, spec.name) == ("cpu", None, f"cpu-{PID}@{HOST}")
    assert spec.command() == [sys.executable, "-m", "workers.process.main", "--device", "cpu", "--name",
                              f"cpu-{PID}@{HOST}", "--threads", "2"]
    env = spec.env()
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU worker never initialises a GPU
    assert env["PYTHONUNBUFFERED"] == "1"


def test_named_single_worker() -> None:
    (spec,) = worker_specs("gpu:1", "edge", [])
    assert spec.name == "edge" and spec.gpu_index == 1
    assert spec.command()[-2:] == ["--gpu-index", "1"]


def test_one_worker_per_gpu_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what the parent sees; each child sees one card
    args = ["--loglevel", "INFO"]
    specs = worker_specs("gpu:all", None, args)
    assert [s.name for s in specs] == [f"gpu0-{PID}@{HOST}", f"gpu1-{PID}@{HOST}"]
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1"]
    assert [s.command()[s.command().index("--gpu-index") + 1] for s in specs] == ["0", "1"]
    specs[0].args.append("--extra")
    assert specs[1].args == args and args == ["--loglevel", "INFO"]  # each spec has its own list
    named = worker_specs("gpu:0,1", "node7", [])
    assert [s.name for s in named] == ["node7-gpu0", "node7-gpu1"]
    assert len({s.name for s in named}) == len(named)
