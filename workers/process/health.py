"""``trtbatch worker --check``: is the worker on this machine alive, heartbeating and able to reach
Redis? Exit 0 only if all three hold (a container health check).

Each worker process writes ``<state_dir>/workers/<name>.json`` (its pid) while it runs; the check
reads those files, so it needs no argument inside a container and ``--name`` elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from common import fleet, redisconn
from common.config import Settings


def pidfile(settings: Settings, name: str) -> Path:
    return settings.state_dir / "workers" / f"{name.replace('/', '_')}.json"


def write_pidfile(settings: Settings, name: str, metrics_port: int) -> Path:
    path = pidfile(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "pid": os.getpid(), "started_s": time.time(),
                                "metrics_port": metrics_port}))
    return path


def remove_pidfile(settings: Settings, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        pidfile(settings, name).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def check(settings: Settings, name: str | None = None) -> tuple[bool, list[str]]:
    """(healthy, one line per worker)."""
    folder = settings.state_dir / "workers"
    files = [pidfile(settings, name)] if name else sorted(folder.glob("*.json"))
    files = [f for f in files if f.exists()]
    if not files:
        return False, [f"no worker is running from {folder}" + (f" under the name {name}" if name else "")]
    try:
        conn = redisconn.client(settings, socket_timeout=5)
        redisconn.ping(conn)
        live = {w.name: w for w in fleet.live_workers(conn, settings.heartbeat_ttl_s)}
    except Exception as exc:
        return False, [f"cannot reach Redis: {exc}"]
    ok, lines = True, []
    for path in files:
        info = json.loads(path.read_text())
        wname, pid = info["name"], int(info["pid"])
        record = live.get(wname)
        if not _alive(pid):
            ok = False
            lines.append(f"{wname}: process {pid} is not running")
        elif record is None or record.pid != pid:
            ok = False
            lines.append(f"{wname}: no heartbeat in the last {settings.heartbeat_ttl_s}s")
        else:
            lines.append(f"{wname}: ok (pid {pid}, {record.state}, seen {time.time() - record.last_seen_s:.1f}s ago)")
    return ok, lines
