"""The pipeline's way to a predictor: a model version materialised from Redis, a spec decided for
this node (common/spec.py), the calibration tables it needs installed, and the slot's cache."""

from __future__ import annotations

from pathlib import Path

from common.calibration import install_tables
from common.errors import PermanentError
from common.manifest import ModelManifest
from common.routing import INT8_TRT_CALIB, choose_backend
from common.schemas import Backend, BatchTask, Precision
from common.spec import build_spec
from workers.engines.base import Predictor
from workers.pipeline.context import SlotContext


def load_manifest(ctx: SlotContext, version_id: str) -> tuple[ModelManifest, Path]:
    """The version's manifest and local folder, downloaded once per machine."""
    model_dir = ctx.artifacts.materialize(version_id, ctx.cache_dir)
    manifest = ctx.manifests.get(version_id)
    if manifest is None:
        manifest = ModelManifest.load(model_dir)
        ctx.manifests[version_id] = manifest
    return manifest, model_dir


def predictor_for(ctx: SlotContext, task: BatchTask, manifest: ModelManifest, model_dir: Path) -> Predictor:
    """The predictor serving ``task`` on this worker (a batch of a job)."""
    try:
        backend = choose_backend(task.target, task.precision, ctx.identity.capabilities)
    except PermanentError:
        if task.target == "any":
            raise
        backend = task.target  # let build_spec say exactly what this node lacks
    return predictor_for_spec(ctx, task.version_id, manifest, model_dir, backend, task.precision,
                              min(task.batch_size, manifest.max_batch_size), task.int8_source)


def predictor_for_spec(ctx: SlotContext, version_id: str, manifest: ModelManifest, model_dir: Path,
                       backend: Backend, precision: Precision, batch_size: int, int8_source: str | None
                       ) -> Predictor:
    spec = build_spec(manifest, version_id, ctx.identity.node, ctx.identity.device, backend, precision,
                      batch_size, int8_source, cpu_threads=ctx.identity.predictor_threads,
                      gpu_memory_pool_mb=ctx.settings.gpu_memory_pool_mb)
    opt_dir = ctx.engine_dir(spec.engine_cache_name())
    if spec.int8_source == INT8_TRT_CALIB:
        install_tables(ctx.artifacts, spec, opt_dir)
    return ctx.predictors.get(spec, model_dir, opt_dir,
                              on_build=lambda seconds: ctx.observer.built(manifest.name, spec, seconds))
