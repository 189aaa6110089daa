"""The embedded redis-server: start once, reuse, private files, status, stop, and AOF persistence."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.embedded import EmbeddedRedis
from common.errors import BrokerError


@pytest.fixture()
def server() -> Iterator[EmbeddedRedis]:
    state = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))  # unix socket paths are limited to ~107 bytes
    srv = EmbeddedRedis(state)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(state, ignore_errors=True)


def alive(pid: int) -> bool:
    """A process that runs (a zombie left for an init that does not reap, as in some containers, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_start_reuse_and_privacy(server: EmbeddedRedis) -> None:
    assert not server.responding() and server.pid() is None
    url = server.ensure_running()
    assert url == f"unix://{server.socket}"
    pid = server.pid()
    assert pid is not None and alive(pid) and server.responding()
    assert server.ensure_running() == url
    assert server.pid() == pid  # reused, not restarted
    assert mode(server.dir) == 0o700
    assert stat.S_ISSOCK(os.stat(server.socket).st_mode)
    assert mode(server.socket) & 0o077 == 0  # neither group nor others may connect
    assert mode(server.dir / "redis.conf") == 0o600


def test_status_and_stop(server: EmbeddedRedis) -> None:
    before = server.status()
    assert before["running"] is False and before["pid"] is None and "version" not in before
    server.ensure_running()
    st = server.status()
    assert st["running"] is True and st["pid"] == server.pid() and st["url"] == server.url
    assert st["dir"] == str(server.dir)
    assert isinstance(st["version"], str) and st["version"].count(".") == 2
    assert st["used_memory"] > 0 and st["uptime_s"] >= 0
    pid = st["pid"]
    assert server.stop() is True
    assert not server.responding() and server.pid() is None
    assert not alive(pid)
    assert server.status()["running"] is False
    assert server.stop() is False  # nothing left to stop


def test_data_survives_a_restart(server: EmbeddedRedis) -> None:
    server.ensure_running()
    conn = redis.Redis(unix_socket_path=str(server.socket))
    conn.set("trtbatch:test:persist", b"still here")
    conn.hset("trtbatch:test:hash", mapping={"a": "1"})
    conn.close()
    first = server.pid()
    server.stop()
    server.ensure_running()
    assert server.pid() != first
    conn = redis.Redis(unix_socket_path=str(server.socket))
    assert conn.get("trtbatch:test:persist") == b"still here"
    assert conn.hgetall("trtbatch:test:hash") == {b"a": b"1"}
    conn.close()


def test_loose_permissions_are_tightened_and_every_file_is_private(server: EmbeddedRedis) -> None:
    """A state folder left world-writable, and a config file left world-readable (by an older version or
    a user's umask), are made private again on start; the server's own files (log, pidfile, append-only
    files) are created private too."""
    server.dir.mkdir(parents=True)
    os.chmod(server.dir, 0o777)
    old_conf = server.dir / "redis.conf"
    old_conf.write_text("# stale\n")
    os.chmod(old_conf, 0o644)
    server.ensure_running()
    conn = redis.Redis(unix_socket_path=str(server.socket))
    conn.set("trtbatch:test:private", b"x")  # makes the server write its append-only file
    conn.close()
    assert mode(server.dir) == 0o700
    assert mode(old_conf) == 0o600 and "unixsocketperm 700" in old_conf.read_text()
    files = [p for p in server.dir.rglob("*") if not p.is_socket()]
    assert {p.name for p in files} >= {"redis.conf", "redis.log", "redis.pid", "data"}
    loose = {str(p): oct(mode(p)) for p in files if mode(p) & 0o077}
    assert not loose, loose


def test_refuses_a_state_folder_that_is_a_link(tmp_path: Path) -> None:
    """``<state>/redis`` pointing elsewhere (another user's folder, a shared one) is refused, not chmod'ed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    state = tmp_path / "state"
    state.mkdir()
    (state / "redis").symlink_to(elsewhere)
    with pytest.raises(BrokerError, match="must be a directory owned by you"):
        EmbeddedRedis(state).ensure_running()
    assert mode(elsewhere) == 0o755 and not list(elsewhere.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a folder to another user")
def test_refuses_a_state_folder_of_another_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "redis").mkdir(parents=True, mode=0o755)
    os.chown(state / "redis", 65534, 65534)
    with pytest.raises(BrokerError, match="must be a directory owned by you"):
        EmbeddedRedis(state).ensure_running()
    assert mode(state / "redis") == 0o755 and not list((state / "redis").iterdir())
