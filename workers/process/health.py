"""``trtbatch worker --check``: is the worker on this machine alive, heartbeating and able to reach
Redis? Exit 0 only if all three hold (a container health check).

Each worker process writes a record of its own while it runs:
``<state_dir>/workers/<name>.<pid>.json`` with its name, pid, process start time and the Redis it
serves. One file per process, created exclusively (``link`` of a complete file, never an
overwrite), so two workers on one host - the same name on two Redis servers, two launches of the
default name - can never overwrite or delete each other's record. The check reads the records of
the Redis it is configured for (a container's own environment: no argument needed), optionally of
one ``--name``, and asks that Redis whether each is heartbeating.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from common import fleet, redisconn
from common.config import Settings

RECORD_SUFFIX = ".json"


@dataclass(frozen=True)
class PidRecord:
    path: Path
    name: str
    pid: int
    redis: str  # the Redis the worker serves (redacted URL)
    created_s: float  # the process's start time: a pid the kernel gave to a new process is not it
    metrics_port: int = 0
    launcher_pid: int = 0  # the process that started it (the launcher, or a shell); 0: not recorded
    launcher_created_s: float = 0.0

    @property
    def alive(self) -> bool:
        return _running(self.pid, self.created_s)

    @property
    def launcher_alive(self) -> bool:
        return not self.launcher_pid or _running(self.launcher_pid, self.launcher_created_s)


def _running(pid: int, created_s: float) -> bool:
    try:
        proc = psutil.Process(pid)
        # a zombie is dead: killed, not yet reaped (in a container, PID 1 may never reap it)
        return abs(proc.create_time() - created_s) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process holds the pid: it exists
        return True


def records_dir(settings: Settings) -> Path:
    return settings.state_dir / "workers"


def redis_identity(settings: Settings, url: str | None = None) -> str:
    """Which Redis a record belongs to: the URL its worker resolved (the embedded server's socket when
    ``redis_url`` is unset), without its password."""
    return redisconn.redact_url(url or redisconn.resolve_url(settings, start=False))


def _safe(name: str) -> str:
    return name.replace("/", "_")


def write_pidfile(settings: Settings, name: str, metrics_port: int, url: str | None = None) -> Path:
    """Create this process's record; returns its path (``remove_pidfile`` takes it)."""
    pid = os.getpid()
    folder = records_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(name)}.{pid}{RECORD_SUFFIX}"
    me = psutil.Process(pid)
    parent = me.parent()
    body = {"name": name, "pid": pid, "redis": redis_identity(settings, url), "created_s": me.create_time(),
            "started_s": time.time(), "metrics_port": metrics_port,
            "launcher_pid": parent.pid if parent else 0, "launcher_created_s": parent.create_time() if parent else 0.0}
    tmp = folder / f".{path.name}.tmp"
    tmp.write_text(json.dumps(body))
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)  # exclusive and complete at once: readers never see half a record
                return path
            except FileExistsError:  # a dead process that had our pid left it: it cannot be live
                path.unlink(missing_ok=True)
        raise FileExistsError(f"{path} keeps reappearing")
    finally:
        tmp.unlink(missing_ok=True)


def remove_pidfile(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_records(settings: Settings) -> list[PidRecord]:
    out = []
    for path in sorted(records_dir(settings).glob(f"*{RECORD_SUFFIX}")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info: dict[str, Any] = json.loads(path.read_text())
            out.append(PidRecord(path, str(info["name"]), int(info["pid"]), str(info["redis"]),
                                 float(info["created_s"]), int(info.get("metrics_port") or 0),
                                 int(info.get("launcher_pid") or 0), float(info.get("launcher_created_s") or 0)))
    return out


def _mine(settings: Settings, name: str | None) -> tuple[list[PidRecord], int]:
    """The records of this Redis (and ``name``), minus those of dead processes that a live process
    has replaced (a worker its launcher restarted after a SIGKILL) or whose launcher is gone too
    (the whole launch was killed; nobody will restart it, and a new launch has new default names),
    which are deleted; and how many records belong to other Redis servers."""
    redis_id = redis_identity(settings)
    every = read_records(settings)
    ours = [r for r in every if r.redis == redis_id and (name is None or r.name == name)]
    live_names = {r.name for r in ours if r.alive}
    kept = []
    for rec in ours:
        if not rec.alive and (rec.name in live_names or not rec.launcher_alive):
            remove_pidfile(rec.path)
        else:
            kept.append(rec)
    return kept, sum(1 for r in every if r.redis != redis_id)


def check(settings: Settings, name: str | None = None) -> tuple[bool, list[str]]:
    """(healthy, one line per worker)."""
    records, others = _mine(settings, name)
    if not records:
        where = f"{records_dir(settings)} for {redis_identity(settings)}" + (f" under the name {name}" if name else "")
        elsewhere = f" ({others} worker record(s) there serve other Redis servers)" if others else ""
        return False, [f"no worker is running from {where}{elsewhere}"]
    try:
        conn = redisconn.client(settings, socket_timeout=5)
        redisconn.ping(conn)
        live = {w.name: w for w in fleet.live_workers(conn, settings.heartbeat_ttl_s)}
    except Exception as exc:
        return False, [f"cannot reach Redis: {exc}"]
    ok, lines = True, []
    for rec in records:
        beat = live.get(rec.name)
        if not rec.alive:
            ok = False
            lines.append(f"{rec.name}: process {rec.pid} is not running")
        elif beat is None or beat.pid != rec.pid:
            ok = False
            lines.append(f"{rec.name}: no heartbeat in the last {settings.heartbeat_ttl_s}s")
        else:
            seen = time.time() - beat.last_seen_s
            lines.append(f"{rec.name}: ok (pid {rec.pid}, {beat.state}, seen {seen:.1f}s ago)")
    return ok, lines
