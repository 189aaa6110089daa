"""Worker memory across batch sizes and idle periods: the RSS of each pipeline slot (pool process).

    python -m bench.memory --model resnet50 --batches 16,64,256 --per-size 2 --idle-s 45

For each batch size: one job of ``per-size`` batches, the peak RSS of each slot while it runs, then
the RSS every ``--sample-s`` for ``--idle-s`` seconds of idling. One JSON line per sample, then a
summary line. ``--idle-release-s`` / ``--evict-s`` set the worker's ``idle_release_s`` and
``predictor_idle_evict_s`` (left out: the worker's defaults, so the same script measures code that
predates the settings). A private redis-server and worker, CPU by default; CPU-heavy with ResNet50.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import env as bench_env
from bench.support import PeakSampler, image_folder
from common.config import Settings
from producer import jobs, submit

MB = 2**20


def slot_rss(worker: psutil.Process) -> dict[int, int]:
    """pid -> RSS bytes of each pool process of the worker (its children but the probe)."""
    out = {}
    for child in worker.children():
        try:
            out[child.pid] = child.memory_info().rss
        except psutil.Error:
            continue
    return out


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def one_size(benv: bench_env.BenchEnv, worker: psutil.Process, model: str, batch: int, folder: Path,
             args: argparse.Namespace) -> dict[str, Any]:
    """A job of ``batch``-sized batches, then the idle period; returns the size's summary."""
    sampler = PeakSampler(lambda: max(slot_rss(worker).values(), default=0))
    sampler.start()
    started = time.monotonic()
    job_id = submit.submit(benv.client, submit.SubmitOptions(paths=(str(folder),), model=model, batch_size=batch))
    final = jobs.wait(benv.client, job_id, timeout_s=3600)
    job_s = time.monotonic() - started
    peak = sampler.stop()
    if final.state != "done" or final.failed:
        raise RuntimeError(f"job {job_id} at batch {batch}: {final.state}, {final.failed} failed")
    idle = []
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) <= args.idle_s:
        rss = slot_rss(worker)
        emit({"batch": batch, "idle_s": round(elapsed, 1), "slot_rss_mb": {p: round(r / MB) for p, r in rss.items()}})
        idle.append(max(rss.values(), default=0))
        time.sleep(args.sample_s)
    return {"batch": batch, "images": final.n_images, "job_s": round(job_s, 1), "peak_slot_rss_mb": round(peak / MB),
            "after_job_mb": round(idle[0] / MB), "end_of_idle_mb": round(idle[-1] / MB)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memory")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batches", default="16,64,256", help="batch sizes, in order")
    p.add_argument("--per-size", type=int, default=2, help="batches per size")
    p.add_argument("--idle-s", type=float, default=45.0, help="seconds sampled after each job")
    p.add_argument("--sample-s", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--idle-release-s", type=float, default=None)
    p.add_argument("--evict-s", type=float, default=None)
    args = p.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="tb-mem-") as tmp:
        benv = bench_env.BenchEnv(Settings.from_env(), Path(tmp))
        for name, value in (("IDLE_RELEASE_S", args.idle_release_s), ("PREDICTOR_IDLE_EVICT_S", args.evict_s)):
            if value is not None:
                benv.env[f"TRTBATCH_{name}"] = str(value)
        proc = benv.start_worker(bench_env.BenchOptions(model=args.model, threads=args.threads, slots=args.slots), [])
        try:
            worker = psutil.Process(proc.pid)
            emit({"started": True, "slot_rss_mb": {p: round(r / MB) for p, r in slot_rss(worker).items()}})
            root = Path(tmp) / "images"
            summary = [one_size(benv, worker, args.model, b, image_folder(root, b * args.per_size, 256), args)
                       for b in sizes]
            emit({"summary": summary, "idle_release_s": args.idle_release_s, "evict_s": args.evict_s})
        finally:
            bench_env.stop(proc)
            benv.close()


if __name__ == "__main__":
    main()
