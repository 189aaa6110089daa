"""A real worker gives an idle slot's memory back: with short ``idle_release_s`` and
``predictor_idle_evict_s``, its slot drops its predictors once a job is over (the fleet view shows
it, and the process is smaller), and the next job builds them again."""

from __future__ import annotations

import os
import shutil
import time
import zlib  # noqa: F401  # before paddle
from pathlib import Path

import psutil
import pytest

from common.config import Settings
from producer import jobs, submit
from producer.client import Client
from tests.helpers import RedisServer, running_worker, slot_states, wait_until, worker_env

pytestmark = pytest.mark.integration
NAME = "itest-mem@local"


def test_idle_slots_drop_their_predictors_and_serve_again(digits, session_dirs, tmp_path):
    server = RedisServer(Path(f"/tmp/tb-mem-{os.getpid()}-{time.monotonic_ns()}")).start()  # its own: no other worker
    base = {"TRTBATCH_REDIS_URL": server.url, "TRTBATCH_MODEL_REPO": str(digits["repo"]),
            "TRTBATCH_CACHE_DIR": str(session_dirs["cache"]), "TRTBATCH_STATE_DIR": str(tmp_path / "state")}
    env = worker_env(base, TRTBATCH_IDLE_RELEASE_S="1", TRTBATCH_PREDICTOR_IDLE_EVICT_S="3")
    client = Client(Settings.from_env(base))
    conn = server.client()
    try:
        with running_worker(conn, env, NAME, tmp_path / "worker.log", "--slots", "1"):
            opts = submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits", batch_size=64)
            first = jobs.wait(client, submit.submit(client, opts), timeout_s=180)
            assert first.state == "done" and first.failed == 0
            (state,) = slot_states(conn, NAME).values()
            assert state["predictors"], state
            busy_rss = psutil.Process(state["pid"]).memory_info().rss
            wait_until(lambda: not slot_states(conn, NAME)[0]["predictors"], 60, "the idle slot to drop its predictors")
            assert psutil.Process(state["pid"]).memory_info().rss < busy_rss  # the same process, smaller
            second = jobs.wait(client, submit.submit(client, opts), timeout_s=180)
            assert second.state == "done" and second.failed == 0
            assert slot_states(conn, NAME)[0]["pid"] == state["pid"]  # served by the same slot, rebuilt
    finally:
        client.close()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
