"""Throughput benchmark (``trtbatch bench``).

One run measures, for one model / precision / batch size / device:

(a) ``bare``  - the Paddle predictor alone on preprocessed arrays (same spec as the worker's);
(b) ``e2e``   - files on disk -> ``trtbatch submit`` (a subprocess) -> Redis -> one worker -> results,
                from job creation to the last result written;
(c) ``naive`` - the Celery-tutorial way: image bytes in the message, decode in the task, one task
                per image (bench/naive.py), same worker and predictor;

and prints one JSON line with all three, the ratios (b)/(a) and (b)/(c), per-batch timings of the
worker pipeline (queue overhead: payload fetch + result write + Celery delivery gap; device idle
time between consecutive batches), and the peak RSS of the producer and of the worker.

Everything runs against a private redis-server (the embedded binary) in a temporary folder, so
nothing else competes for the worker and nothing is left behind.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.support import image_folder, rss_sampler
from common import keys
from common.config import Settings
from common.embedded import server_binary
from common.schemas import BatchTimings, JobRecord, PipelineMode
from producer import jobs
from producer.client import Client

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchOptions:
    model: str = "resnet50"
    precision: str = "fp32"
    batch_size: int = 16
    device: str = "cpu"
    threads: int = 2
    decode_threads: int = 0
    images: int = 960
    naive_images: int = 160
    image_size: int = 256
    bare_seconds: float = 10.0
    slots: int = 2
    calib_images: int = 64
    overlap_decode: str = "auto"


class BenchEnv:
    """A private redis-server, model repository access and environment for subprocesses."""

    def __init__(self, base: Settings, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "redis.sock"
        self.redis = subprocess.Popen([server_binary(), "--port", "0", "--unixsocket", str(self.socket),
                                       "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.settings = base.replace(redis_url=f"unix://{self.socket}", state_dir=workdir / "state")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRTBATCH_")}
        self.env.update(TRTBATCH_REDIS_URL=self.settings.redis_url or "", PYTHONUNBUFFERED="1",
                        TRTBATCH_MODEL_REPO=str(base.model_repo), TRTBATCH_CACHE_DIR=str(base.cache_dir),
                        TRTBATCH_STATE_DIR=str(workdir / "state"),
                        PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.client = Client(self.settings)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.client.conn.ping()
                return
            except Exception:
                self.__dict__.pop("client", None)
                self.client = Client(self.settings)
                time.sleep(0.1)
        raise RuntimeError("bench redis-server did not start")

    def start_worker(self, opts: BenchOptions, warm: str | list[str]) -> subprocess.Popen:
        kind = "gpu" if opts.device.startswith("gpu") else "cpu"
        cmd = [sys.executable, "-m", "bench.worker", "--device", kind, "--name", "bench@local", "--threads",
               str(opts.threads), "--slots", str(opts.slots), "--loglevel", "WARNING"]
        for entry in [warm] if isinstance(warm, str) else warm:
            cmd += ["--warm", entry]
        env = dict(self.env)
        env["TRTBATCH_OVERLAP_DECODE"] = opts.overlap_decode
        if kind == "gpu":
            index = opts.device.split(":", 1)[1] if ":" in opts.device else "0"
            cmd += ["--gpu-index", index]
            env["CUDA_VISIBLE_DEVICES"] = index
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if opts.decode_threads:
            cmd += ["--decode-threads", str(opts.decode_threads)]
        log = open(self.workdir / "worker.log", "ab")  # noqa: SIM115  # owned by the child
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"bench worker exited: {(self.workdir / 'worker.log').read_text()[-3000:]}")
            if any(w.name == "bench@local" and w.state == "ready" for w in self.client.live_workers()):
                return proc
            time.sleep(0.2)
        raise RuntimeError("bench worker did not become ready")

    def close(self) -> None:
        self.client.close()
        self.redis.send_signal(signal.SIGTERM)
        self.redis.wait(10)


# -- the three measurements -------------------------------------------------------------------
def bare(opts: BenchOptions, client: Client, version_id: str, int8_source: str | None, arrays: np.ndarray
         ) -> dict[str, Any]:
    """(a): the predictor alone, same spec as the worker builds, on preprocessed arrays."""
    from common.spec import build_spec
    from workers import engines
    from workers.engines.probe import detect

    device = "gpu" if opts.device.startswith("gpu") else "cpu"
    backend = "cpu" if device == "cpu" else ("trt" if opts.precision != "fp32" else "gpu")
    model_dir = client.artifacts.materialize(version_id, client.settings.cache_dir)
    manifest = client.artifacts.manifest(version_id)
    spec = build_spec(manifest, version_id, detect(gpu=device == "gpu"), device, backend, opts.precision,
                      opts.batch_size, int8_source, cpu_threads=opts.threads,
                      gpu_memory_pool_mb=client.settings.gpu_memory_pool_mb)
    pred = engines.build(spec, model_dir, client.settings.cache_dir / "engines" / spec.engine_cache_name())
    batches = [arrays[i:i + opts.batch_size] for i in range(0, len(arrays) - opts.batch_size + 1, opts.batch_size)]
    for b in batches[:2]:
        pred.run(b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < opts.bare_seconds or n < 4 * opts.batch_size:
        pred.run(batches[(n // opts.batch_size) % len(batches)])
        n += opts.batch_size
    elapsed = time.perf_counter() - started
    pred.close()
    return {"images_per_s": n / elapsed, "ms_per_batch": 1000 * elapsed / (n / opts.batch_size), "images": n}


def run_producer(env: BenchEnv, args: list[str]) -> tuple[str, float, int]:
    """Run `trtbatch <args>` as a subprocess; returns (stdout, wall seconds, peak RSS bytes)."""
    cmd = [sys.executable, "-m", "cli", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    sampler = rss_sampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"trtbatch {' '.join(args)} failed ({proc.returncode}): {out[-2000:]} {err[-2000:]}")
    return out.decode(), wall, peak


def e2e(env: BenchEnv, opts: BenchOptions, folder: Path) -> dict[str, Any]:
    """(b): a real `trtbatch submit --wait` subprocess; rate from job creation to the last result."""
    out, wall, peak = run_producer(env, ["submit", str(folder), "--model", opts.model, "--precision",
                                         opts.precision, "--batch-size", str(opts.batch_size), "--wait", "--json"])
    result = json.loads(out)
    elapsed = result["finished_s"] - result["created_s"]
    return {"job_id": result["job_id"], "images_per_s": result["n_images"] / elapsed, "seconds": elapsed,
            "wall_with_cli_start_s": wall, "images": result["n_images"], "failed": result["failed"],
            "producer_peak_rss_mb": peak / 2**20}


def naive(env: BenchEnv, opts: BenchOptions, folder: Path, version_id: str, int8_source: str | None,
          backend: str) -> dict[str, Any]:
    """(c): one Celery task per image, the bytes inside the message."""
    from bench.naive import NAIVE_TASK
    from producer.submit import new_job_id

    client = env.client
    files = sorted(folder.glob("*.jpg"))[:opts.naive_images]
    job_id = new_job_id()
    queue = f"trtbatch.{backend}.{opts.precision}"
    client.store.create_job(JobRecord(job_id=job_id, model=opts.model, version_id=version_id, kind="naive-baseline",
                                      precision=opts.precision, target=backend, queue=queue))  # type: ignore[arg-type]
    with client.app.producer_or_acquire() as producer:
        for i, path in enumerate(files):
            message = {"job_id": job_id, "index": i, "path": str(path), "data": path.read_bytes(),
                       "version_id": version_id, "precision": opts.precision, "backend": backend,
                       "int8_source": int8_source}
            client.app.send_task(NAIVE_TASK, args=[message], queue=queue, serializer="msgpack", producer=producer)
    client.store.mark_submitted(job_id, len(files), len(files))
    final = jobs.wait(client, job_id, poll_s=0.2, timeout_s=3600)
    elapsed = final.meta["finished_s"] - final.meta["created_s"]
    return {"images_per_s": len(files) / elapsed, "seconds": elapsed, "images": len(files)}


def batch_stats(client: Client, job_id: str, e2e_ms_per_batch: float) -> dict[str, float]:
    """Per-batch pipeline timings from the worker's records (ms; ``BatchTimings``, common/schemas.py).

    * device idle: time between consecutive predictor runs on the device;
    * delivery gap (per slot): postprocessing done -> next batch started: result write, Celery ack,
      next message;
    * queue overhead per batch: on a shared device (GPU), end-to-end time per batch minus what the
      device must do anyway - predictor run, plus decoding when it happens under the device lock -
      i.e. what Redis, Celery and the producer add to the critical path; on a CPU worker whose slots
      own their cores, a slot's payload fetch plus its delivery gap.
    """
    rows = sorted((BatchTimings.decode(v) for v in client.conn.hvals(keys.job_timings(job_id))),
                  key=lambda r: r.infer_start_s)
    mean = statistics.fmean
    out: dict[str, Any] = {"batches": len(rows), "fetch_ms": mean(1000 * (r.fetched_s - r.started_s) for r in rows),
                           "decode_ms": mean(1000 * (r.decode_end_s - r.decode_start_s) for r in rows),
                           "infer_ms": mean(1000 * (r.infer_end_s - r.infer_start_s) for r in rows),
                           "postprocess_ms": mean(1000 * (r.postprocessed_s - r.infer_end_s) for r in rows)}
    idle = [1000 * max(0.0, b.infer_start_s - a.infer_end_s) for a, b in itertools.pairwise(rows)]
    out["device_idle_ms_per_batch"] = mean(idle) if idle else 0.0
    by_pid: dict[int, list[BatchTimings]] = {}
    for r in rows:
        by_pid.setdefault(r.pid, []).append(r)
    gaps = [1000 * (b.started_s - a.postprocessed_s) for runs in by_pid.values()
            for a, b in itertools.pairwise(sorted(runs, key=lambda r: r.started_s))]
    out["delivery_gap_ms"] = statistics.median(gaps) if gaps else 0.0
    mode = rows[0].mode
    if mode is PipelineMode.PARTITIONED:  # CPU slots each own their cores: the queue's share of a slot's cycle
        out["queue_overhead_ms_per_batch"] = out["fetch_ms"] + out["delivery_gap_ms"]
    else:  # one shared device: what the queue adds to its critical path
        critical = out["infer_ms"] + (out["decode_ms"] if mode is PipelineMode.DECODE_UNDER_LOCK else 0.0)
        out["queue_overhead_ms_per_batch"] = max(0.0, e2e_ms_per_batch - critical)
    out["pipeline_mode"] = mode.value
    return out


# -- orchestration -----------------------------------------------------------------------------
def ensure_model(client: Client, opts: BenchOptions) -> None:
    from tools import modelmake

    if client.repo.exists(opts.model):
        return
    if opts.model == "digits":
        modelmake.make_digits(client.repo)
    else:
        modelmake.make_vision(client.repo, opts.model)


def ensure_int8(env: BenchEnv, opts: BenchOptions, folder: Path) -> None:
    """A PTQ version through a real calibration job (reused when the repository already has one)."""
    from producer import calibrate
    from producer.submit import publish_local

    client = env.client
    publish_local(client, opts.model, "int8")
    if client.artifacts.versions(f"{opts.model}@int8-ptq"):
        return
    job_id = calibrate.calibrate(client, calibrate.CalibrateOptions(
        model=opts.model, images=(str(folder),), samples=opts.calib_images, batch_size=min(opts.batch_size, 16)))
    final = jobs.wait(client, job_id, timeout_s=1800)
    if final.state != "done":
        raise RuntimeError(f"calibration failed: {final.meta.get('error')}")
    calibrate.pull_version(client, final.meta["result_name"], final.meta["result_version"])


def preprocessed(client: Client, version_id: str, folder: Path, n: int) -> np.ndarray:
    from common.imaging import Preprocessor

    manifest = client.artifacts.manifest(version_id)
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, client.settings.max_image_pixels)
    return np.stack([pre(p.read_bytes()).array for p in sorted(folder.glob("*.jpg"))[:n]])


def run(opts: BenchOptions, base: Settings | None = None) -> dict[str, Any]:
    from common import catalog
    from producer.submit import publish_local

    base = base or Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="trtbatch-bench-", dir="/tmp"))
    env = BenchEnv(base, workdir)
    worker = None
    try:
        ensure_model(env.client, opts)
        folder = image_folder(base.cache_dir / "bench", max(opts.images, opts.calib_images), opts.image_size)
        publish_local(env.client, opts.model, opts.precision)
        device = "gpu" if opts.device.startswith("gpu") else "cpu"
        backend = "cpu" if device == "cpu" else ("gpu" if opts.precision == "fp32" else "trt")
        if opts.precision == "int8":
            worker = env.start_worker(opts, f"{opts.model}:fp32:{opts.batch_size}")
            ensure_int8(env, opts, folder)
            stop(worker)
            worker = None
        resolved = catalog.resolve(env.client.artifacts, opts.model, opts.precision, backend)
        arrays = preprocessed(env.client, resolved.version_id, folder, max(4 * opts.batch_size, 64))
        result_a = bare(opts, env.client, resolved.version_id, resolved.int8_source, arrays)
        worker = env.start_worker(opts, f"{opts.model}:{opts.precision}:{opts.batch_size}")
        sampler = rss_sampler(worker.pid)
        sampler.start()
        result_b = e2e(env, opts, folder)
        worker_rss = sampler.stop()
        stats = batch_stats(env.client, result_b["job_id"], 1000 * opts.batch_size / result_b["images_per_s"])
        result_c = naive(env, opts, folder, resolved.version_id, resolved.int8_source, backend)
    finally:
        if worker is not None:
            stop(worker)
        env.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return report(opts, result_a, result_b, result_c, stats, worker_rss)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def report(opts: BenchOptions, a: dict, b: dict, c: dict, stats: dict, worker_rss: int) -> dict[str, Any]:
    from workers.engines.paddle_import import paddle

    gpu = ""
    if opts.device.startswith("gpu"):
        from workers.engines.gpus import gpu_memory

        found = gpu_memory(int(opts.device.split(":", 1)[1]) if ":" in opts.device else 0)
        gpu = found[0] if found else "?"
    return {
        "bench": "throughput", "model": opts.model, "precision": opts.precision, "batch_size": opts.batch_size,
        "device": opts.device, "gpu": gpu, "threads": opts.threads, "slots": opts.slots,
        "overlap_decode": opts.overlap_decode,
        "image_size": opts.image_size, "cpu_count": os.cpu_count(), "paddle": paddle().__version__,
        "bare_images_per_s": round(a["images_per_s"], 2), "e2e_images_per_s": round(b["images_per_s"], 2),
        "naive_images_per_s": round(c["images_per_s"], 2),
        "ratio_e2e_over_bare": round(b["images_per_s"] / a["images_per_s"], 4),
        "ratio_e2e_over_naive": round(b["images_per_s"] / c["images_per_s"], 3),
        "queue_overhead_ms_per_batch": round(stats["queue_overhead_ms_per_batch"], 3),
        "device_idle_ms_per_batch": round(stats["device_idle_ms_per_batch"], 3),
        "bare_ms_per_batch": round(a["ms_per_batch"], 3),
        "e2e_ms_per_batch": round(1000 * opts.batch_size / b["images_per_s"], 3),
        "worker_timings_ms": {k: round(v, 3) for k, v in stats.items() if k.endswith("_ms")},
        "images": b["images"], "naive_images": c["images"], "failed": b["failed"],
        "producer_peak_rss_mb": round(b["producer_peak_rss_mb"], 1),
        "worker_peak_rss_mb": round(worker_rss / 2**20, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
