"""Throughput benchmark (``trtbatch bench``).

One run measures, for one model / engine / precision / batch size / device / image sizes:

(a) ``bare``  - the predictor alone on preprocessed arrays (same spec as the worker's); on GPUs also
                with the batch already in device memory (``bare_device``: the engine's ceiling);
(b) ``e2e``   - files on disk -> ``trtbatch submit`` (a subprocess) -> Redis -> one worker -> results,
                from job creation to the last result written (GPU JPEG decode as the worker's
                ``gpu_decode`` setting says);
(c) ``naive`` - the Celery-tutorial way: image bytes in the message, decode in the task, one task
                per image (bench/naive.py), same worker and predictor;
(d) a peer (``--peer ray``): Ray Data batch inference on the same files, model, engine and batch size
    (bench/peers.py);

and prints one JSON line with all of them, the ratios, per-batch timings of the worker pipeline
(decode/preprocess time, host-to-device bytes, images decoded on the GPU, queue overhead, device idle
time between batches), and the peak RSS of the producer and of the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.env import BenchEnv, BenchOptions, run_producer, stop
from bench.stats import batch_stats, write_timeline
from bench.support import GIL_RATE, cpu_use, gil_profile, image_folder, rss_sampler, thread_cpu_s
from common import catalog, routing
from common.config import Settings
from common.schemas import JobRecord
from common.spec import ort_model_variant
from producer import jobs
from producer.client import Client


def _predictor(opts: BenchOptions, client: Client, resolved: catalog.Resolved):
    from common.spec import build_spec
    from workers import engines
    from workers.engines.probe import detect

    engine, backend = opts.engine, opts.backend
    variant = ort_model_variant(backend, opts.precision, resolved.int8_source) if engine == "onnxruntime" else ""
    vid = catalog.engine_artifact(client.artifacts, resolved.version_id, resolved.manifest, engine, variant)
    model_dir = client.artifacts.materialize(vid, client.settings.cache_dir)
    spec = build_spec(client.artifacts.manifest(vid), vid, detect(gpu=opts.gpu), "gpu" if opts.gpu else "cpu",
                      backend, opts.precision, opts.batch_size, resolved.int8_source, cpu_threads=opts.threads,  # type: ignore[arg-type]
                      gpu_memory_pool_mb=client.settings.gpu_memory_pool_mb, engine=engine,  # type: ignore[arg-type]
                      own_stream=opts.engine_stream == "own")
    return engines.build(spec, model_dir, client.settings.cache_dir / "engines" / spec.engine_cache_name())


def _rate(run, batches: list[Any], opts: BenchOptions) -> dict[str, float]:
    for b in batches[:2]:
        run(b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < opts.bare_seconds or n < 4 * opts.batch_size:
        run(batches[(n // opts.batch_size) % len(batches)])
        n += opts.batch_size
    elapsed = time.perf_counter() - started
    return {"images_per_s": n / elapsed, "ms_per_batch": 1000 * elapsed / (n / opts.batch_size), "images": n}


def bare(opts: BenchOptions, client: Client, resolved: catalog.Resolved, arrays: np.ndarray) -> dict[str, Any]:
    """(a): the predictor alone, same spec as the worker builds, on preprocessed arrays."""
    pred = _predictor(opts, client, resolved)
    batches = [arrays[i:i + opts.batch_size] for i in range(0, len(arrays) - opts.batch_size + 1, opts.batch_size)]
    out = _rate(pred.run, batches, opts)
    if pred.accepts_device_input:
        try:
            import cupy
        except ImportError:
            cupy = None
        if cupy is not None:
            resident = [cupy.asarray(b) for b in batches]
            out["device"] = _rate(pred.run_device, resident, opts)
    pred.close()
    return out


def e2e(env: BenchEnv, opts: BenchOptions, folder: Path) -> dict[str, Any]:
    """(b): a real `trtbatch submit --wait` subprocess; rate from job creation to the last result."""
    out, wall, peak = run_producer(env, ["submit", str(folder), "--model", opts.model, "--precision",
                                         opts.precision, "--engine", opts.engine, "--batch-size", str(opts.batch_size),
                                         "--wait", "--json"])
    result = json.loads(out)
    elapsed = result["finished_s"] - result["created_s"]
    return {"job_id": result["job_id"], "images_per_s": result["n_images"] / elapsed, "seconds": elapsed,
            "wall_with_cli_start_s": wall, "images": result["n_images"], "failed": result["failed"],
            "producer_peak_rss_mb": peak / 2**20,
            # when the producer had sent the last image: near the end of the job, it was the producer that set the pace
            "producer_s": result["submitted_s"] - result["created_s"]}


def naive(env: BenchEnv, opts: BenchOptions, folder: Path, resolved: catalog.Resolved) -> dict[str, Any]:
    """(c): one Celery task per image, the bytes inside the message."""
    from bench.naive import NAIVE_TASK
    from producer.submit import new_job_id

    client = env.client
    files = sorted(folder.glob("*.jpg"))[:opts.naive_images]
    job_id = new_job_id()
    queue = routing.queue_name(opts.engine, opts.backend, opts.precision)
    client.store.create_job(JobRecord(job_id=job_id, model=opts.model, version_id=resolved.version_id,  # type: ignore[arg-type]
                                      kind="naive-baseline", precision=opts.precision, target=opts.backend,
                                      queue=queue))
    with client.app.producer_or_acquire() as producer:
        for i, path in enumerate(files):
            message = {"job_id": job_id, "index": i, "path": str(path), "data": path.read_bytes(),
                       "version_id": resolved.version_id, "precision": opts.precision, "backend": opts.backend,
                       "engine": opts.engine, "int8_source": resolved.int8_source}
            client.app.send_task(NAIVE_TASK, args=[message], queue=queue, serializer="msgpack", producer=producer)
    client.store.mark_submitted(job_id, len(files), len(files))
    final = jobs.wait(client, job_id, poll_s=0.2, timeout_s=3600)
    elapsed = final.meta["finished_s"] - final.meta["created_s"]
    return {"images_per_s": len(files) / elapsed, "seconds": elapsed, "images": len(files)}


# -- getting the model ready ---------------------------------------------------------------------
def ensure_model(client: Client, opts: BenchOptions) -> None:
    from tools import modelmake

    if client.repo.exists(opts.model):
        return
    if opts.model == "digits":
        modelmake.make_digits(client.repo)
    else:
        modelmake.make_vision(client.repo, opts.model)


def _wait_done(client: Client, job_id: str, what: str) -> dict[str, Any]:
    final = jobs.wait(client, job_id, timeout_s=1800)
    if final.state != "done":
        raise RuntimeError(f"{what} failed: {final.meta.get('error')}")
    return final.meta


def ensure_int8(env: BenchEnv, opts: BenchOptions, folder: Path) -> None:
    """A PTQ version through a real calibration job (reused when the repository already has one)."""
    from producer import calibrate
    from producer.submit import publish_local

    client = env.client
    publish_local(client, opts.model, "int8")
    if client.artifacts.versions(f"{opts.model}@int8-ptq"):
        return
    meta = _wait_done(client, calibrate.calibrate(client, calibrate.CalibrateOptions(
        model=opts.model, images=(str(folder),), samples=opts.calib_images, batch_size=min(opts.batch_size, 16))),
        "calibration")
    calibrate.pull_version(client, meta["result_name"], meta["result_version"])


def ensure_forms(env: BenchEnv, opts: BenchOptions, resolved: catalog.Resolved) -> None:
    """The ONNX forms the job needs, through a real conversion job on the bench worker."""
    from producer import convert

    if catalog.missing_forms(env.client.artifacts, resolved, opts.precision, opts.backend):
        _wait_done(env.client, convert.convert(env.client, convert.ConvertOptions(resolved.name)), "conversion")


def preprocessed(client: Client, version_id: str, folder: Path, n: int) -> np.ndarray:
    from common.imaging import Preprocessor

    manifest = client.artifacts.manifest(version_id)
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, client.settings.max_image_pixels)
    return np.stack([pre(p.read_bytes()).array for p in sorted(folder.glob("*.jpg"))[:n]])


def prepare(env: BenchEnv, opts: BenchOptions, folder: Path) -> catalog.Resolved:
    """Publish the model, and make what the precision and engine need (a PTQ version, ONNX forms) with
    real jobs on a bench worker."""
    from producer.submit import publish_local

    publish_local(env.client, opts.model, opts.precision)
    needs_int8 = opts.precision == "int8" and not env.client.repo.load(opts.model).quantized
    worker = None
    try:
        if needs_int8 or opts.engine == "onnxruntime":
            worker = env.start_worker(opts, [])
        if needs_int8:
            ensure_int8(env, opts, folder)
        resolved = catalog.resolve(env.client.artifacts, opts.model, opts.precision, opts.backend,
                                   engine=opts.engine)
        if opts.engine == "onnxruntime":
            ensure_forms(env, opts, resolved)
    finally:
        if worker is not None:
            stop(worker)
    return resolved


def run(opts: BenchOptions, base: Settings | None = None) -> dict[str, Any]:
    base = base or Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="trtbatch-bench-", dir="/tmp"))
    env = BenchEnv(base, workdir)
    worker = None
    out: dict[str, Any] = {}
    try:
        ensure_model(env.client, opts)
        folder = image_folder(base.cache_dir / "bench", max(opts.images, opts.calib_images), opts.sizes)
        resolved = prepare(env, opts, folder)
        arrays = preprocessed(env.client, resolved.version_id, folder, max(4 * opts.batch_size, 64))
        out["bare"] = bare(opts, env.client, resolved, arrays)
        worker = env.start_worker(opts, f"{opts.model}:{opts.precision}:{opts.batch_size}:{opts.engine}")
        sampler = rss_sampler(worker.pid)
        sampler.start()
        cpu_before = thread_cpu_s(worker.pid)
        with gil_profile(worker.pid, opts.py_spy) as spied:
            out["e2e"] = e2e(env, opts, folder)
        out["py_spy"] = spied
        out["worker_cpu"] = cpu_use(cpu_before, thread_cpu_s(worker.pid), out["e2e"]["seconds"])
        out["worker_rss"] = sampler.stop()
        ms_per_batch = 1000 * opts.batch_size / out["e2e"]["images_per_s"]
        out["stats"] = batch_stats(env.client, out["e2e"]["job_id"], ms_per_batch)
        if opts.timeline:
            write_timeline(env.client, out["e2e"]["job_id"], opts.timeline)
        out["naive"] = naive(env, opts, folder, resolved) if opts.naive_images else None
        stop(worker)
        worker = None
        if opts.peer == "ray":
            from bench.peers import ray_data

            out["peer"] = ray_data(opts, env.client, resolved, folder)
    finally:
        if worker is not None:
            stop(worker)
        env.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return report(opts, out)


def _versions() -> dict[str, str]:
    import importlib.metadata

    found = {}
    for dist in ("paddlepaddle", "paddlepaddle-gpu", "onnxruntime", "onnxruntime-gpu", "nvidia-nvimgcodec-cu13", "ray"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def report(opts: BenchOptions, out: dict[str, Any]) -> dict[str, Any]:
    a, b, c, stats = out["bare"], out["e2e"], out["naive"], out["stats"]
    gpu = ""
    if opts.gpu:
        from workers.engines.gpus import gpu_memory

        found = gpu_memory(int(opts.device.split(":", 1)[1]) if ":" in opts.device else 0)
        gpu = found[0] if found else "?"
    line: dict[str, Any] = {
        "bench": "throughput", "model": opts.model, "engine": opts.engine, "precision": opts.precision,
        "backend": opts.backend, "batch_size": opts.batch_size, "device": opts.device, "gpu": gpu,
        "threads": opts.threads, "slots": opts.slots, "overlap_decode": opts.overlap_decode,
        "slot_pool": opts.slot_pool, "engine_stream": opts.engine_stream,
        # decoders per worker process: thread slots share at most one per slot, process slots have one each
        "gpu_decoders": min(opts.gpu_decoders, opts.slots) if opts.slot_pool == "threads" else 1,
        "gpu_jpeg_backend": opts.gpu_jpeg_backend, "prefetch_multiplier": opts.prefetch_multiplier,
        "gil_switch_interval_ms": opts.gil_switch_interval_ms if opts.slot_pool == "threads" else None,
        "gpu_decode": opts.gpu_decode, "image_size": opts.sizes, "cpu_count": os.cpu_count(), "versions": _versions(),
        "bare_images_per_s": round(a["images_per_s"], 2), "e2e_images_per_s": round(b["images_per_s"], 2),
        "ratio_e2e_over_bare": round(b["images_per_s"] / a["images_per_s"], 4),
        "queue_overhead_ms_per_batch": round(stats["queue_overhead_ms_per_batch"], 3),
        "device_idle_ms_per_batch": round(stats["device_idle_ms_per_batch"], 3),
        "bare_ms_per_batch": round(a["ms_per_batch"], 3),
        "e2e_ms_per_batch": round(1000 * opts.batch_size / b["images_per_s"], 3),
        "worker_timings_ms": {k: round(v, 3) for k, v in stats.items() if k.endswith("_ms")},
        "h2d_bytes_per_batch": round(stats["h2d_bytes_per_batch"]),
        "gpu_decoded_fraction": round(stats["gpu_decoded_fraction"], 4),
        "images": b["images"], "failed": b["failed"],
        "producer_peak_rss_mb": round(b["producer_peak_rss_mb"], 1), "producer_s": round(b["producer_s"], 3),
        "producer_images_per_s": round(b["images"] / b["producer_s"], 2),
        "worker_peak_rss_mb": round(out["worker_rss"] / 2**20, 1),
        "worker_cpu_during_e2e": out["worker_cpu"],
        **{k: round(stats[k], 2 if k.endswith("_per_s") else 3) for k in ("steady_images_per_s", "startup_s", "tail_s")
           if k in stats},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if "device" in a:
        line["bare_device_images_per_s"] = round(a["device"]["images_per_s"], 2)
        line["ratio_e2e_over_bare_device"] = round(b["images_per_s"] / a["device"]["images_per_s"], 4)
    if out.get("py_spy", {}).get("seconds"):
        line["py_spy"] = {"file": opts.py_spy, "seconds": out["py_spy"]["seconds"], "rate": GIL_RATE}
    if c:
        line.update(naive_images_per_s=round(c["images_per_s"], 2), naive_images=c["images"],
                    ratio_e2e_over_naive=round(b["images_per_s"] / c["images_per_s"], 3))
    if out.get("peer"):
        peer = out["peer"]
        line.update(peer=peer, ratio_e2e_over_peer=round(b["images_per_s"] / peer["images_per_s"], 3))
    return line
