"""A conversion job: a model version to its ONNX forms, each checked, then published fleet-wide.

From a Paddle version (on a worker with Paddle and paddle2onnx): ``<name>.onnx`` (FP32, or QDQ when
the version is quantized) and, unless the job says otherwise, ``<name>.onnx-fp16``; from an ONNX
version (any ONNX Runtime worker): ``<name>.onnx-fp16``. Each form is compared with the source's
own outputs on the job's check images - or, without any, on seeded random images in the model's
input range - and published only within tolerance (workers/engines/onnx_convert.py). Each is a
model version of its own (content-addressed, ``provenance.source_version`` naming the source), so
GPU workers fetch it through Redis like any version and the catalog finds it (common/catalog.py).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import catalog
from common.errors import ConversionError
from common.manifest import ONNX_FILE, ModelManifest
from common.schemas import BatchPayload, ConvertTask
from common.spec import PredictorSpec
from workers import engines
from workers.engines import onnx_convert
from workers.pipeline.context import SlotContext
from workers.pipeline.decode import decode_all
from workers.pipeline.predictors import load_manifest

RANDOM_SAMPLES = 16
MAX_CHECK_SAMPLES = 64


def check_inputs(ctx: SlotContext, task: ConvertTask, manifest: ModelManifest) -> np.ndarray:
    """The job's check images, preprocessed as workers do; else seeded random 8-bit images."""
    pre = ctx.preprocessor(manifest)  # the image limits and modes of this worker's batches
    arrays = []
    for key in task.check_payload_keys:
        raw = ctx.conn.get(key)
        if raw is None:
            raise ConversionError(f"check image payload {key} expired or missing")
        items = list(BatchPayload.decode(raw).items)
        buf, decoded = decode_all(ctx.pool, ctx.identity.decode_threads, pre, items, manifest.input.chw)
        arrays.append(buf[[i for i, d in enumerate(decoded) if not isinstance(d, Exception)]])
    if arrays and sum(len(a) for a in arrays):
        return np.concatenate(arrays)[:MAX_CHECK_SAMPLES]
    pixels = np.random.default_rng(0).integers(0, 256, (RANDOM_SAMPLES, *manifest.input.chw)).astype(np.float32)
    mean = np.resize(np.asarray(manifest.preprocess.mean, np.float32), manifest.input.chw[0])[:, None, None]
    std = np.resize(np.asarray(manifest.preprocess.std, np.float32), manifest.input.chw[0])[:, None, None]
    return ((pixels * manifest.preprocess.scale - mean) / std).astype(np.float32)


def paddle_outputs(model_dir: Path, manifest: ModelManifest, inputs: np.ndarray, work: Path) -> np.ndarray:
    """The source's own outputs: Paddle on the CPU (oneDNN INT8 for a quantized program)."""
    spec = PredictorSpec(version_id="convert-reference", backend="cpu", device="cpu",
                         precision="int8" if manifest.quantized else "fp32", input_shape=tuple(manifest.input.shape))
    predictor = engines.build(spec, model_dir, work / "reference-opt")
    try:
        return next(iter(predictor.run(inputs).values()))
    finally:
        predictor.close()


def publish_form(ctx: SlotContext, task: ConvertTask, source: ModelManifest, folder: Path, variant: str,
                 report: dict[str, Any]) -> dict[str, Any]:
    name = catalog.onnx_name(source.name, variant)
    provenance = {"source_version": task.version_id, "source_name": source.name, "variant": variant,
                  "check": report, "tools": onnx_convert.tool_versions(), "worker": ctx.identity.name,
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest = dataclasses.replace(source, name=name, format="onnx", provenance=provenance,
                                   description=f"{variant} ONNX form of {source.name} ({task.version_id})")
    manifest.save(folder)
    vid = ctx.artifacts.publish_version(name, folder, extra={"provenance": provenance})
    return {"name": name, "version_id": vid, "variant": variant, "check": report}


def existing_form(ctx: SlotContext, task: ConvertTask, manifest: ModelManifest, variant: str) -> dict[str, Any] | None:
    """A form already published for the version: a version is converted once (``force`` makes it anew)."""
    vid = None if task.force else catalog.onnx_form(ctx.artifacts, task.version_id, manifest, variant)
    if vid is None or vid == task.version_id:
        return None
    prov = ctx.artifacts.manifest(vid).provenance
    return {"name": catalog.onnx_name(manifest.name, variant), "version_id": vid, "variant": variant,
            "check": prov.get("check"), "reused": True}


def run_conversion(ctx: SlotContext, task: ConvertTask) -> dict[str, Any]:
    manifest, model_dir = load_manifest(ctx, task.version_id)
    ctx.store.set_fields(task.job_id, state="running", worker=ctx.identity.name)
    variants = ([] if manifest.format == "onnx" else ["qdq" if manifest.quantized else "fp32"]) + (
        ["fp16"] if task.fp16 and not manifest.quantized else [])
    reused = [f for v in variants if (f := existing_form(ctx, task, manifest, v))]
    if len(reused) == len(variants) and variants:
        return {"result_name": reused[0]["name"], "result_version": reused[0]["version_id"],
                "conversions": tuple(reused), "samples": 0}
    inputs = check_inputs(ctx, task, manifest)
    forms = []
    with tempfile.TemporaryDirectory(dir=ctx.cache_dir) as tmp:
        work = Path(tmp)
        if manifest.format == "paddle":
            reference = paddle_outputs(model_dir, manifest, inputs, work)
            fp32 = onnx_convert.paddle_to_onnx(model_dir, work / "fp32")
            variant = "qdq" if manifest.quantized else "fp32"
            report = onnx_convert.check(variant, reference, onnx_convert.run_cpu(fp32, inputs))
            forms.append(publish_form(ctx, task, manifest, fp32.parent, variant, report))
        else:
            fp32 = model_dir / ONNX_FILE
            reference = onnx_convert.run_cpu(fp32, inputs)
        if task.fp16 and not manifest.quantized:
            fp16 = onnx_convert.to_fp16(fp32, work / "fp16")
            report = onnx_convert.check("fp16", reference, onnx_convert.run_cpu(fp16, inputs))
            forms.append(publish_form(ctx, task, manifest, fp16.parent, "fp16", report))
    if not forms:
        raise ConversionError(f"nothing to convert: {task.model} is already an ONNX model (ask for --fp16)")
    return {"result_name": forms[0]["name"], "result_version": forms[0]["version_id"], "conversions": tuple(forms),
            "samples": len(inputs)}
