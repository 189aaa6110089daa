"""Load: a 100,000-image job (small images) through a real producer subprocess, Redis and a worker,
with bounded memory everywhere. Slow (~2 min on 2 cores); CI runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.load import small_images
from bench.support import PeakSampler, rss_sampler
from common import keys
from tests.helpers import REPO_ROOT, RedisServer, running_worker, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_IMAGES = 100_000
MB = 2**20


def test_a_100k_image_job_completes_with_bounded_memory(digits, session_dirs):
    folder = Path(tempfile.mkdtemp(prefix="tb-load-", dir="/tmp"))
    server = RedisServer(folder / "redis").start()
    try:
        images = small_images(session_dirs["images"], N_IMAGES)
        env = worker_env({"TRTBATCH_REDIS_URL": server.url, "TRTBATCH_MODEL_REPO": str(digits["repo"]),
                          "TRTBATCH_CACHE_DIR": str(session_dirs["cache"]),
                          "TRTBATCH_STATE_DIR": str(folder / "state")})
        conn = server.client()
        redis_mem = PeakSampler(lambda: conn.info("memory")["used_memory"])
        with running_worker(conn, env, "load-cpu", folder / "worker.log", "--threads", "2") as worker:
            worker_rss = rss_sampler(worker.pid)
            worker_rss.start()
            redis_mem.start()
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", "submit",
                                     str(images), "-m", "digits", "-b", "64", "--wait", "--json"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
            producer_rss = rss_sampler(proc.pid)
            producer_rss.start()
            out, err = proc.communicate(timeout=900)
            wall = time.monotonic() - started
            peaks = {"producer": producer_rss.stop(), "worker": worker_rss.stop(), "redis": redis_mem.stop()}
        assert proc.returncode == 0, err.decode()[-2000:]
        status = json.loads(out)
        figures = {"wall_s": round(wall, 1), "images_per_s": round(N_IMAGES / wall, 1),
                   **{f"{k}_peak_mb": round(v / MB, 1) for k, v in peaks.items()}}
        print("load figures:", json.dumps(figures))
        assert status["state"] == "done" and status["done"] == N_IMAGES and status["failed"] == 0
        assert conn.hlen(keys.job_results(status["job_id"])) == N_IMAGES
        assert not list(conn.scan_iter(match=keys.payload("*", "*")))  # every claim-check was consumed
        # bounded: the producer streams (no per-image state), the worker holds a few batches,
        # Redis holds the results (~0.4 KB each) plus at most max_inflight_batches payloads
        assert peaks["producer"] < 200 * MB, figures
        assert peaks["worker"] < 2048 * MB, figures
        assert peaks["redis"] < 150 * MB, figures
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
