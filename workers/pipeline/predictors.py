"""The pipeline's way to a predictor: the engine and backend chosen for the job on this worker, the
version that engine loads (the job's version, or its ONNX form) materialised from Redis, a spec
decided for this node (common/spec.py), the calibration tables it needs installed, and the slot's
predictor cache."""

from __future__ import annotations

from pathlib import Path

from common import catalog
from common.calibration import install_tables
from common.errors import PermanentError
from common.manifest import ModelManifest
from common.routing import INT8_TRT_CALIB, choose
from common.schemas import Backend, BatchTask, Engine, Precision
from common.spec import build_spec, ort_model_variant
from workers.engines.base import Predictor
from workers.pipeline.context import SlotContext


def manifest_of(ctx: SlotContext, version_id: str) -> ModelManifest:
    """A version's manifest, read from Redis once per process (no download)."""
    manifest = ctx.manifests.get(version_id)
    if manifest is None:
        manifest = ctx.artifacts.manifest(version_id)
        ctx.manifests[version_id] = manifest
    return manifest


def load_manifest(ctx: SlotContext, version_id: str) -> tuple[ModelManifest, Path]:
    """The version's manifest and local folder, downloaded once per machine."""
    model_dir = ctx.artifacts.materialize(version_id, ctx.cache_dir)
    return manifest_of(ctx, version_id), model_dir


def predictor_for(ctx: SlotContext, task: BatchTask, manifest: ModelManifest) -> Predictor:
    """The predictor serving ``task`` on this worker (a batch of a job)."""
    try:
        engine, backend = choose(task.engine, task.target, task.precision, ctx.identity.capabilities)
    except PermanentError:
        if task.target == "any":
            raise
        # a batch on a queue this node should not serve: let build_spec say exactly what it lacks
        engine, backend = ("paddle" if task.engine == "any" else task.engine), task.target
    return predictor_for_spec(ctx, task.version_id, manifest, backend, task.precision,  # type: ignore[arg-type]
                              min(task.batch_size, manifest.max_batch_size), task.int8_source, engine)


def engine_artifact(ctx: SlotContext, version_id: str, manifest: ModelManifest, engine: Engine, backend: Backend,
                    precision: Precision, int8_source: str | None) -> tuple[str, ModelManifest, Path]:
    """The version ``engine`` loads for ``version_id`` (its ONNX form for ONNX Runtime), looked up once
    per process."""
    variant = ort_model_variant(backend, precision, int8_source) if engine == "onnxruntime" else "paddle"
    key = (version_id, engine, variant)
    artifact = ctx.artifact_ids.get(key)
    if artifact is None:
        artifact = catalog.engine_artifact(ctx.artifacts, version_id, manifest, engine, variant)
        ctx.artifact_ids[key] = artifact
    return (artifact, *load_manifest(ctx, artifact))


def predictor_for_spec(ctx: SlotContext, version_id: str, manifest: ModelManifest, backend: Backend,
                       precision: Precision, batch_size: int, int8_source: str | None,
                       engine: Engine = "paddle") -> Predictor:
    artifact, manifest, model_dir = engine_artifact(ctx, version_id, manifest, engine, backend, precision,
                                                    int8_source)
    spec = build_spec(manifest, artifact, ctx.identity.node, ctx.identity.device, backend, precision,
                      batch_size, int8_source, cpu_threads=ctx.identity.predictor_threads,
                      gpu_memory_pool_mb=ctx.settings.gpu_memory_pool_mb, engine=engine,
                      own_stream=ctx.settings.gpu_engine_stream == "own")
    opt_dir = ctx.engine_dir(spec.engine_cache_name())
    if spec.int8_source == INT8_TRT_CALIB:
        install_tables(ctx.artifacts, spec, opt_dir)
    return ctx.predictors.get(spec, model_dir, opt_dir,
                              on_build=lambda seconds: ctx.observer.built(manifest.name, spec, seconds))
