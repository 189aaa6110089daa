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
    """Ray stage 2 (actors): one predictor per actor, built as our workers build it."""

    def __init__(self, spec: PredictorSpec, model_dir: str, opt_dir: str) -> None:
        from workers import engines

        self.predictor = engines.build(spec, Path(model_dir), Path(opt_dir))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.predictor.run(batch["x"])
        return {"top1": next(iter(outputs.values())).reshape(len(batch["x"]), -1).argmax(1)}


def ray_data(opts: BenchOptions, client: Client, resolved: catalog.Resolved, folder: Path) -> dict[str, Any]:
    import ray

    from workers.engines.probe import detect

    engine, backend = opts.engine, opts.backend
    variant = ort_model_variant(backend, opts.precision, resolved.int8_source) if engine == "onnxruntime" else ""
    vid = catalog.engine_artifact(client.artifacts, resolved.version_id, resolved.manifest, engine, variant)
    model_dir = client.artifacts.materialize(vid, client.settings.cache_dir)
    manifest = client.artifacts.manifest(vid)
    spec = build_spec(manifest, vid, detect(gpu=opts.gpu), "gpu" if opts.gpu else "cpu", backend,  # type: ignore[arg-type]
                      opts.precision, opts.batch_size, resolved.int8_source, cpu_threads=opts.threads,  # type: ignore[arg-type]
                      engine=engine)  # type: ignore[arg-type]
    files = sorted(str(p) for p in folder.glob("*.jpg"))[:opts.images]
    cpus = os.cpu_count() or 1
    # Ray places work by logical CPUs: one per decode actor, fractions for the file reads and the
    # inference actor (whose predictor still runs opts.threads threads, as our worker's does) so that
    # all stages fit on the node at once; more would leave a stage unscheduled and the run stuck.
    decoders = max(1, cpus - 1)
    ray.init(num_cpus=cpus, num_gpus=1 if opts.gpu else 0, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    opt_dir = client.settings.cache_dir / "engines" / spec.engine_cache_name()

    def run(paths: list[str]) -> tuple[int, float]:
        started = time.perf_counter()
        ds = ray.data.read_binary_files(paths, ray_remote_args={"num_cpus": 0.25})
        ds = ds.map_batches(Decode, fn_constructor_args=(manifest.to_toml(), client.settings.max_image_pixels),
                            batch_size=opts.batch_size, compute=ray.data.ActorPoolStrategy(size=decoders), num_cpus=1)
        ds = ds.map_batches(Infer, fn_constructor_args=(spec, str(model_dir), str(opt_dir)),
                            batch_size=opts.batch_size, compute=ray.data.ActorPoolStrategy(size=1),
                            num_gpus=1 if opts.gpu else 0, num_cpus=0.5)
        n = sum(len(b["top1"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
        return n, time.perf_counter() - started

    try:
        return {"system": "ray-data", "version": ray.__version__, "decode_actors": decoders,
                "inference_actors": 1, **_marginal_rate(run, files, opts.batch_size)}
    finally:
        ray.shutdown()


def _marginal_rate(run: Any, files: list[str], batch_size: int) -> dict[str, Any]:
    """Images/s with Ray's start-up cost taken out, beside the whole-run rate.

    Ray builds its actors (and so the predictor) each time a dataset runs, whereas our workers are up
    before the job starts. A short run (one batch per decode actor's worth of files) measures that fixed
    cost; the rate is (N - n) / (T_N - T_n). A discarded first run warms the page cache and Ray's worker
    processes so that the short and the full run start alike. Taking the rate from the first prediction
    instead would flatter Ray: its decoders work ahead while the predictor builds.
    """
    short = files[:batch_size]
    run(short)
    n_short, t_short = run(short)
    n, t = run(files)
    rate = (n - n_short) / (t - t_short) if n > n_short and t > t_short else 0.0
    return {"images": n, "seconds": round(t, 3), "startup_s": round(t_short, 3),
            "images_per_s_whole_run": round(n / t, 2), "images_per_s": round(rate, 2)}
