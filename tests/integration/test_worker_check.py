"""``trtbatch worker --check`` with two real workers on one host: the default name launched twice,
on two Redis servers, one state folder. Each check must report its own worker, and a worker that
stops (or is killed) must never make the other look dead, nor itself look alive."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import fleet
from tests.helpers import REPO_ROOT, RedisServer, kill_group, stop_worker, wait_until, worker_env

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-c", "from cli import main; main()"]
TTL_S = 4


@pytest.fixture()
def two_redis() -> Iterator[list[RedisServer]]:
    # short socket paths under /tmp: a unix socket path must fit in 107 bytes
    servers = [RedisServer(Path(f"/tmp/tb-check-{os.getpid()}-{i}-{time.monotonic_ns()}")).start() for i in range(2)]
    yield servers
    for server in servers:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def ready_names(server: RedisServer) -> list[str]:
    return [w.name for w in fleet.live_workers(server.client(), TTL_S) if w.state == "ready"]


def check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "worker", "--check"], env=env, capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60)


def test_check_tells_two_default_named_workers_apart(two_redis, tmp_path):
    state = tmp_path / "state"
    envs = [worker_env({"TRTBATCH_REDIS_URL": s.url, "TRTBATCH_STATE_DIR": str(state),
                        "TRTBATCH_MODEL_REPO": str(tmp_path / "models"), "TRTBATCH_CACHE_DIR": str(tmp_path / "cache"),
                        "TRTBATCH_HEARTBEAT_TTL_S": str(TTL_S), "TRTBATCH_HEARTBEAT_INTERVAL_S": "1"})
            for s in two_redis]
    launchers = [subprocess.Popen([*CLI, "worker", "--device", "cpu", "--threads", "1", "--slots", "1"], env=env,
                                  stdout=open(tmp_path / f"launcher{i}.log", "wb"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
                 for i, env in enumerate(envs)]
    try:
        names = [wait_until(lambda s=s: ready_names(s), 240, f"a worker on {s.url}")[0] for s in two_redis]
        assert names == [f"cpu-{p.pid}@{socket.gethostname()}" for p in launchers]  # unique per launch
        for env, mine, theirs in ((envs[0], *names), (envs[1], *names[::-1])):
            out = check(env)
            assert out.returncode == 0, out.stderr
            assert f"{mine}: ok" in out.stdout and theirs not in out.stdout
        # a warm stop removes that worker's record only
        assert stop_worker(launchers[0], signal.SIGTERM) == 0
        out = check(envs[0])
        assert out.returncode == 1 and "no worker is running" in out.stderr and "1 worker record(s)" in out.stderr
        out = check(envs[1])
        assert out.returncode == 0 and f"{names[1]}: ok" in out.stdout, out.stderr
        # a SIGKILL of the whole launch: nothing will restart it
        worker_pid = fleet.live_workers(two_redis[1].client(), TTL_S)[0].pid
        kill_group(launchers[1])
        out = check(envs[1])
        # the launcher went with it: the stale record is dropped, and the check fails all the same
        assert out.returncode == 1 and "no worker is running" in out.stderr, out.stderr
        assert not list((state / "workers").glob(f"*.{worker_pid}.json"))
    finally:
        for proc in launchers:
            kill_group(proc)
