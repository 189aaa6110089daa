"""Peer systems run on the same files, model, engine and batch size as ``trtbatch bench``.

Ray Data batch inference, the way its documentation sets it up: ``read_binary_files`` over the image
folder, a ``map_batches`` stage of CPU tasks decoding and preprocessing (the very Preprocessor our
workers use, so both systems compute the same tensors), and a ``map_batches`` stage of actors each
holding the same predictor our workers build (``workers.engines.build`` from the same spec), with
``num_gpus=1`` on a GPU; rows are consumed as they come. Its rate is measured like ours: files on
disk to the last prediction. Ray is a benchmark dependency only (``pip install 'ray[data]'``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.env import BenchOptions
from common import catalog
from common.imaging import Preprocessor
from common.manifest import ModelManifest
from common.spec import PredictorSpec, build_spec, ort_model_variant
from producer.client import Client


class Decode:
    """Ray stage 1 (CPU tasks): encoded bytes -> the model's float32 input."""

    def __init__(self, manifest_toml: str, max_pixels: int) -> None:
        manifest = ModelManifest.from_toml(manifest_toml)
        self.pre = Preprocessor(manifest.preprocess, manifest.input.chw, max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": np.stack([self.pre(bytes(b)).array for b in batch["bytes"]])}


class Infer:
    """Ray stage 2 (actors): one predictor per actor, built as our workers build it.

    Ray's calls need not carry a full batch (its blocks gave 10, 11 and 16 rows for batches of 16), and
    every new input shape costs an engine work (ONNX Runtime's CUDA EP searches cuDNN's algorithms
    again), so a short call is padded to the batch size - as our worker's batches are all one size but
    a job's last."""

    def __init__(self, spec: PredictorSpec, model_dir: str, opt_dir: str, batch_size: int) -> None:
        from workers import engines

        self.predictor = engines.build(spec, Path(model_dir), Path(opt_dir))
        self.batch_size = batch_size
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        x = batch["x"]
        n = len(x)  # each row carries its call's number and predictor time: where Ray's time goes
        if n < self.batch_size:
            x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), x.dtype)])
        outputs = {k: v[:n] for k, v in self.predictor.run(x).items()}
        run_ms = (time.perf_counter() - started) * 1000
        self.calls += 1
        return {"top1": next(iter(outputs.values())).reshape(n, -1).argmax(1), "run_ms": np.full(n, run_ms),
                "call": np.full(n, self.calls), "threads": np.full(n, int(os.environ.get("OMP_NUM_THREADS") or 0))}


def ray_data(opts: BenchOptions, client: Client, resolved: catalog.Resolved, folder: Path) -> dict[str, Any]:
    """Ray Data on the same files; on a CPU with its predictor at ``opts.threads`` threads and at one
    (which leaves a core to the decoders: two OpenMP threads sharing two cores with Ray's decode and
    read processes ran 15x slower than bare, 1,550 vs 107 ms per ResNet50 INT8 batch of 16), reporting
    the faster as the peer's figure and both under ``tried``."""
    import ray

    from workers.engines.probe import detect

    engine, backend = opts.engine, opts.backend
    variant = ort_model_variant(backend, opts.precision, resolved.int8_source) if engine == "onnxruntime" else ""
    vid = catalog.engine_artifact(client.artifacts, resolved.version_id, resolved.manifest, engine, variant)
    model_dir = client.artifacts.materialize(vid, client.settings.cache_dir)
    manifest = client.artifacts.manifest(vid)
    node = detect(gpu=opts.gpu)
    files = sorted(str(p) for p in folder.glob("*.jpg"))[:opts.peer_images or opts.images]
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, num_gpus=1 if opts.gpu else 0, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    tried = []
    try:
        for threads in sorted({opts.threads, 1}, reverse=True) if not opts.gpu else [opts.threads]:
            spec = build_spec(manifest, vid, node, "gpu" if opts.gpu else "cpu", backend,  # type: ignore[arg-type]
                              opts.precision, opts.batch_size, resolved.int8_source,  # type: ignore[arg-type]
                              cpu_threads=threads, engine=engine,  # type: ignore[arg-type]
                              own_stream=opts.engine_stream == "own")
            stages = RayStages(ray, spec, manifest, model_dir, client.settings.cache_dir,
                               client.settings.max_image_pixels, opts.batch_size, opts.gpu, cpus)
            tried.append({"predictor_threads": threads, **_marginal_rate(stages.run, files, opts.batch_size),
                          **stages.observed()})
    finally:
        ray.shutdown()
    best = max(tried, key=lambda t: t["images_per_s"])
    return {"system": "ray-data", "version": ray.__version__, **best, "tried": tried}


class RayStages:
    """One Ray Data pipeline: file reads -> decode actors -> one inference actor holding the predictor.

    Ray places work by logical CPUs: one per decode actor, fractions for the file reads and the
    inference actor (whose predictor runs its spec's threads, as our worker's does) so that all
    stages fit on the node at once; more would leave a stage unscheduled and the run stuck."""

    def __init__(self, ray: Any, spec: PredictorSpec, manifest: ModelManifest, model_dir: Path, cache_dir: Path,
                 max_pixels: int, batch_size: int, gpu: bool, cpus: int) -> None:
        self.ray, self.spec, self.manifest, self.model_dir = ray, spec, manifest, model_dir
        self.opt_dir = cache_dir / "engines" / spec.engine_cache_name()
        self.max_pixels, self.batch_size, self.gpu = max_pixels, batch_size, gpu
        # decoders: the cores the predictor's threads leave, at least one
        self.decoders = max(1, cpus - (1 if gpu else spec.cpu_threads))
        self.predictor_ms: list[float] = []
        self.batch_sizes: Counter[int] = Counter()  # rows per predictor call: Ray's blocks need not align
        self.omp_threads = 0

    def run(self, paths: list[str]) -> tuple[int, float]:
        data = self.ray.data
        started = time.perf_counter()
        ds = data.read_binary_files(paths, ray_remote_args={"num_cpus": 0.25})
        ds = ds.map_batches(Decode, fn_constructor_args=(self.manifest.to_toml(), self.max_pixels),
                            batch_size=self.batch_size, compute=data.ActorPoolStrategy(size=self.decoders), num_cpus=1)
        ds = ds.map_batches(Infer, fn_constructor_args=(self.spec, str(self.model_dir), str(self.opt_dir),
                                                               self.batch_size),
                            batch_size=self.batch_size, compute=data.ActorPoolStrategy(size=1),
                            num_gpus=1 if self.gpu else 0, num_cpus=0.5)
        n, rows, call_ms = 0, Counter(), {}
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            n += len(b["top1"])
            rows.update(b["call"].tolist())
            call_ms.update(zip(b["call"].tolist(), b["run_ms"].tolist(), strict=True))
            self.omp_threads = int(b["threads"][0])
        self.predictor_ms, self.batch_sizes = list(call_ms.values()), Counter(rows.values())
        return n, time.perf_counter() - started

    def observed(self) -> dict[str, Any]:
        """Of the last run: where the time went inside the inference actor."""
        median = round(float(np.median(self.predictor_ms)), 3) if self.predictor_ms else None
        return {"decode_actors": self.decoders, "inference_actors": 1, "predictor_ms_per_batch": median,
                "actor_omp_num_threads": self.omp_threads,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


def _marginal_rate(run: Any, files: list[str], batch_size: int) -> dict[str, Any]:
    """Images/s with Ray's start-up cost taken out, beside the whole-run rate.

    Ray builds its actors (and so the predictor) each time a dataset runs, whereas our workers are up
    before the job starts. A run of a quarter of the files (at least a batch) measures the fixed cost
    plus a quarter of the work; the rate is (N - n) / (T_N - T_n). A short run of one batch made the
    difference a second or so of noisy start-up (one figure came out at 6x the whole-run rate). A
    discarded first run of one batch warms the page cache and Ray's worker processes so that both runs
    start alike. Taking the rate from the first prediction instead would flatter Ray: its decoders work
    ahead while the predictor builds.
    """
    run(files[:batch_size])
    n_short, t_short = run(files[:max(batch_size, len(files) // 4)])
    n, t = run(files)
    rate = (n - n_short) / (t - t_short) if n > n_short and t > t_short else 0.0
    return {"images": n, "seconds": round(t, 3), "short_run_images": n_short, "short_run_s": round(t_short, 3),
            "images_per_s_whole_run": round(n / t, 2), "images_per_s": round(rate, 2)}
