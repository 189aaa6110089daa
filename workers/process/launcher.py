"""``trtbatch worker``: start one Celery worker process per device and supervise them.

``--device cpu`` starts one CPU worker; ``gpu:N`` one worker pinned to GPU N; ``gpu:all`` one per
visible GPU, each with ``CUDA_VISIBLE_DEVICES=<i>`` set before anything imports Paddle and its own
hostname (``gpu<i>-<launcher pid>@<host>``). The supervisor forwards SIGTERM/SIGINT (warm shutdown: each
worker finishes its current batch and exits), restarts a worker that dies unexpectedly (with
backoff), and exits 0 once every worker has stopped after a shutdown request. Children receive
SIGTERM if the supervisor itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from common.errors import ConfigError
from workers.engines import gpus

log = logging.getLogger("trtbatch.launcher")
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
_PR_SET_PDEATHSIG = 1


@dataclass
class WorkerSpec:
    device: str  # cpu | gpu
    gpu_index: int | None
    name: str
    args: list[str] = field(default_factory=list)
    metrics_port: int = 0

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "workers.process.main", "--device", self.device, "--name", self.name]
        if self.gpu_index is not None:
            cmd += ["--gpu-index", str(self.gpu_index)]
        return cmd + self.args

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if self.gpu_index is None else str(self.gpu_index)
        if self.metrics_port:
            env["TRTBATCH_METRICS_PORT"] = str(self.metrics_port)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def parse_devices(spec: str) -> list[tuple[str, int | None]]:
    """``cpu`` | ``gpu:N`` | ``gpu:N,M`` | ``gpu:all`` -> [(kind, physical index)]."""
    if spec == "cpu":
        return [("cpu", None)]
    if not spec.startswith("gpu:"):
        raise ConfigError(f"--device {spec!r}: expected cpu, gpu:N, gpu:N,M or gpu:all")
    rest = spec[4:]
    if rest == "all":
        indices = gpus.gpu_indices()
        if not indices:
            raise ConfigError("--device gpu:all: no GPU visible (nvidia-smi found none)")
        return [("gpu", i) for i in indices]
    parts = [x.strip() for x in rest.split(",")]
    if not all(x.isdigit() for x in parts):
        raise ConfigError(f"--device {spec!r}: GPU indices must be non-negative integers")
    indices = [int(x) for x in parts]
    if len(set(indices)) != len(indices):  # two workers would share one name (and one GPU)
        raise ConfigError(f"--device {spec!r}: a GPU index is repeated")
    return [("gpu", i) for i in indices]


def default_name(label: str, launcher_pid: int) -> str:
    """``<label>-<pid>@<host>``: the launcher's pid makes two launches on one host - even on two Redis
    servers - two workers, with their own fleet records, device locks and metrics; a worker the
    launcher restarts keeps its name."""
    return f"{label}-{launcher_pid}@{socket.gethostname()}"


def worker_specs(device: str, name: str | None, args: list[str], metrics_port: int = 0) -> list[WorkerSpec]:
    """One spec per device. Names: ``<label>-<launcher pid>@<host>``, or ``--name`` (``<name>-<label>``
    for many). Metrics ports: ``metrics_port`` for a CPU worker, ``metrics_port + i`` for GPU i."""
    devices = parse_devices(device)
    specs = []
    for kind, index in devices:
        label = "cpu" if kind == "cpu" else f"gpu{index}"
        many = f"{name}-{label}" if len(devices) > 1 else name
        full = many if name else default_name(label, os.getpid())
        port = metrics_port + (index or 0) if metrics_port else 0
        specs.append(WorkerSpec(kind, index, full, list(args), port))
    return specs


def _pdeathsig() -> None:
    with contextlib.suppress(OSError):  # not Linux: no parent-death signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, specs: list[WorkerSpec]) -> None:
        self.specs = specs
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.stopping = False

    def start(self, spec: WorkerSpec) -> None:
        log.info("starting %s: %s", spec.name, " ".join(spec.command()))
        self.procs[spec.name] = subprocess.Popen(spec.command(), env=spec.env(), preexec_fn=_pdeathsig)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # A second Ctrl-C asks for a cold shutdown; anything else is a warm one.
        sig = signal.SIGQUIT if self.stopping and signum == signal.SIGINT else signal.SIGTERM
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for spec in self.specs:
            self.start(spec)
        while True:
            alive = False
            for spec in self.specs:
                proc = self.procs[spec.name]
                code = proc.poll()
                if code is None:
                    alive = True
                elif not self.stopping:
                    alive = True
                    self._restart(spec, code)
            if not alive:
                codes = [p.returncode for p in self.procs.values()]
                return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1
            time.sleep(0.2)

    def _restart(self, spec: WorkerSpec, code: int) -> None:
        if code == 2:  # configuration error: restarting cannot help
            log.error("%s exited with a configuration error; not restarting", spec.name)
            self.stopping = True
            return
        n = self.restarts.get(spec.name, 0)
        delay = RESTART_BACKOFF_S[min(n, len(RESTART_BACKOFF_S) - 1)]
        log.warning("%s exited with %s; restarting in %ss", spec.name, code, delay)
        time.sleep(delay)
        self.restarts[spec.name] = n + 1
        if not self.stopping:
            self.start(spec)


def launch(device: str, name: str | None, args: list[str], metrics_port: int = 0) -> int:
    return Supervisor(worker_specs(device, name, args, metrics_port)).run()
