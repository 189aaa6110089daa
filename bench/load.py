"""Load benchmark (``trtbatch bench-load`` / ``bench/load.py``): many small images through the whole
system, measuring what must stay bounded.

For each job size (10,000 and 100,000 by default) it writes that many small PNGs (the digits
images, cycled, under distinct names in one folder), runs one CPU worker on the digits model and a
real `trtbatch submit --wait` subprocess, and reports wall time, images/s, failures, and the peak
memory of the producer, of the worker (main + pool), and of Redis (``used_memory``, sampled). The
producer streams its input and keeps at most ``max_inflight_batches`` batches in flight, so its
peak RSS should not grow with the job (target: within 20 % between 10k and 100k).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import env as bench_env
from bench import support as bench_support
from common.config import Settings


def small_images(root: Path, n: int) -> Path:
    """``n`` digit PNGs (8x8, ~100 bytes) with distinct names; reused across runs."""
    from tools.modelmake import render_png

    folder = root / f"small-{n}"
    if (folder / ".complete").exists():
        return folder
    from sklearn.datasets import load_digits

    pngs = [render_png(img) for img in load_digits().images]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"d{i:07d}.png").write_bytes(pngs[i % len(pngs)])
    (folder / ".complete").write_text(str(n))
    return folder


def one_load(env: bench_env.BenchEnv, opts: bench_env.BenchOptions, n: int, root: Path) -> dict[str, Any]:
    folder = small_images(root, n)
    baseline = int(env.client.conn.info("memory")["used_memory"])
    worker = env.start_worker(opts, "digits:fp32:64")
    worker_rss = bench_support.rss_sampler(worker.pid)
    redis_mem = bench_support.PeakSampler(lambda: env.client.conn.info("memory")["used_memory"])
    worker_rss.start()
    redis_mem.start()
    try:
        out, wall, producer_peak = bench_env.run_producer(env, ["submit", str(folder), "--model", "digits",
                                                            "--batch-size", "64", "--wait", "--json"])
    finally:
        worker_peak = worker_rss.stop()
        redis_peak = redis_mem.stop()
        bench_env.stop(worker)
    result = json.loads(out)
    elapsed = result["finished_s"] - result["created_s"]
    return {"images": result["n_images"], "failed": result["failed"], "wall_s": round(wall, 2),
            "job_s": round(elapsed, 2), "images_per_s": round(result["n_images"] / elapsed, 1),
            "producer_peak_rss_mb": round(producer_peak / 2**20, 1),
            "worker_peak_rss_mb": round(worker_peak / 2**20, 1),
            "redis_peak_used_memory_mb": round(redis_peak / 2**20, 1),
            "redis_baseline_used_memory_mb": round(baseline / 2**20, 1),
            "redis_after_used_memory_mb": round(int(env.client.conn.info("memory")["used_memory"]) / 2**20, 1)}


def run(sizes: list[int], opts: bench_env.BenchOptions, base: Settings | None = None) -> dict[str, Any]:
    from tools import modelmake

    base = base or Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="trtbatch-load-", dir="/tmp"))
    env = bench_env.BenchEnv(base, workdir)
    try:
        if not env.client.repo.exists("digits"):
            modelmake.make_digits(env.client.repo)
        runs = {str(n): one_load(env, replace(opts, model="digits"), n, base.cache_dir / "bench") for n in sizes}
        out: dict[str, Any] = {"bench": "load", "threads": opts.threads, "cpu_count": os.cpu_count(),
                               "max_inflight_batches": base.max_inflight_batches, "runs": runs,
                               "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if len(sizes) >= 2:
            small, big = runs[str(min(sizes))], runs[str(max(sizes))]
            out["producer_rss_growth"] = round(big["producer_peak_rss_mb"] / small["producer_peak_rss_mb"] - 1, 4)
        return out
    finally:
        env.close()
        shutil.rmtree(workdir, ignore_errors=True)
