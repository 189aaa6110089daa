"""A calibration job: decode the calibration set, calibrate, publish, report.

A calibration job is tracked like an inference job (``trtbatch status``): ``done`` counts
calibration images decoded, the state goes queued -> running -> done | failed, and the result
fields name the version (``result_name``/``result_version``), warnings and the report. It follows
the batches' retry policy: a ``PermanentError`` fails the job at once; anything else (a Redis
blip) is retried with backoff, ``task_max_retries`` times, before the job fails. A retry starts
over (every step is idempotent: versions and tables are content-addressed).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import calibration as calib_contract
from common import catalog, keys
from common.errors import CalibrationError, PermanentError
from common.manifest import ONNX_FILE, ModelManifest
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB, choose
from common.schemas import BatchPayload, CalibTask
from common.spec import ORT_CALIBRATION_TABLE, PredictorSpec, build_spec
from workers.engines import quantize
from workers.pipeline import qreport
from workers.pipeline.context import SlotContext
from workers.pipeline.decode import decode_all
from workers.pipeline.predictors import load_manifest, manifest_of, predictor_for_spec

log = logging.getLogger("trtbatch.calibration")


def decode_set(ctx: SlotContext, job_id: str, payload_keys: tuple[str, ...], manifest: ModelManifest,
               limit: int, count_progress: bool) -> tuple[np.ndarray, list[str | None], int]:
    """Usable arrays (at most ``limit``, 0 = all), their labels, and how many images were unusable."""
    pre = ctx.preprocessor(manifest)
    arrays, labels, bad = [], [], 0
    for key in payload_keys:
        raw = ctx.conn.get(key)
        if raw is None:
            raise CalibrationError(f"calibration payload {key} expired or missing")
        items = list(BatchPayload.decode(raw).items)
        buf, decoded = decode_all(ctx.pool, ctx.identity.decode_threads, pre, items, manifest.input.chw)
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
        bad += len(items) - len(good)
        arrays.append(buf[good])
        labels.extend(items[i].label for i in good)
        if count_progress:
            ctx.store.add_progress(job_id, len(good), len(items) - len(good))
    out = np.concatenate(arrays) if arrays else np.empty((0, *manifest.input.chw), np.float32)
    if limit:
        out, labels = out[:limit], labels[:limit]
    return out, labels, bad


def calibration_sha(arrays: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arrays).tobytes()).hexdigest()


def ptq(ctx: SlotContext, task: CalibTask, manifest: ModelManifest, model_dir: Path, arrays: np.ndarray
        ) -> tuple[str, str]:
    prov = quantize.provenance("ptq", task.algo, len(arrays), calibration_sha(arrays), task.version_id,
                                  ctx.identity.name)
    with tempfile.TemporaryDirectory(dir=ctx.cache_dir) as tmp:
        out = Path(tmp)
        quantize.run_ptq(model_dir, out, manifest.input.name, arrays, task.algo,
                            min(task.batch_size, manifest.max_batch_size))
        qmanifest = quantize.quantized_manifest(manifest, task.model, prov)
        qmanifest.save(out)
        vid = ctx.artifacts.publish_version(qmanifest.name, out, extra={"provenance": prov})
    return qmanifest.name, vid


def trt(ctx: SlotContext, task: CalibTask, manifest: ModelManifest, model_dir: Path, arrays: np.ndarray
        ) -> tuple[str, str]:
    batch = min(task.batch_size, manifest.max_batch_size)
    serving = build_spec(manifest, task.version_id, ctx.identity.node, ctx.identity.device, "trt", "int8", batch,
                         INT8_TRT_CALIB, gpu_memory_pool_mb=ctx.settings.gpu_memory_pool_mb)
    with tempfile.TemporaryDirectory(dir=ctx.cache_dir) as tmp:
        private = quantize.private_model_dir(model_dir, Path(tmp))
        quantize.run_trt_calibration(quantize.calibration_run_spec(serving), private, Path(tmp) / "opt",
                                     arrays, batch)
        tables = quantize.collect_tables(private)
        meta = {"job_id": task.job_id, "samples": len(arrays), "batch_size": batch,
                "calibration_sha256": calibration_sha(arrays), "worker": ctx.identity.name,
                "gpu": ctx.identity.node.gpu_name, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        calib_contract.publish_tables(ctx.artifacts, serving, tables, meta)
    return task.model, task.version_id


def ort_trt(ctx: SlotContext, task: CalibTask, manifest: ModelManifest, model_dir: Path, arrays: np.ndarray
            ) -> tuple[str, str]:
    """Route a on ONNX Runtime: ONNX Runtime's entropy calibrator runs the FP32 ONNX form on the CPU EP
    over the calibration images and writes TensorRT's table (FlatBuffers), published under the ONNX
    version for every TensorRT EP worker; returns the ONNX version it belongs to."""
    from workers.engines import ort_quantize

    onnx_vid = catalog.engine_artifact(ctx.artifacts, task.version_id, manifest, "onnxruntime", "fp32")
    onnx_manifest, onnx_dir = load_manifest(ctx, onnx_vid)
    batch = min(task.batch_size, manifest.max_batch_size)
    with tempfile.TemporaryDirectory(dir=ctx.cache_dir) as tmp:
        table = ort_quantize.calibration_table(onnx_dir / ONNX_FILE, onnx_manifest.input.name, arrays, batch, Path(tmp))
        spec = PredictorSpec(version_id=onnx_vid, backend="trt", precision="int8", device="gpu", engine="onnxruntime")
        meta = {"job_id": task.job_id, "samples": len(arrays), "batch_size": batch, "method": "ort-entropy",
                "calibration_sha256": calibration_sha(arrays), "worker": ctx.identity.name,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        calib_contract.publish_tables(ctx.artifacts, spec, {ORT_CALIBRATION_TABLE: table}, meta)
    return onnx_manifest.name, onnx_vid


def report(ctx: SlotContext, task: CalibTask, fp32_manifest: ModelManifest, result_name: str, result_vid: str
           ) -> dict[str, Any]:
    arrays, labels, _ = decode_set(ctx, task.job_id, task.eval_payload_keys, fp32_manifest, 0, False)
    batch = min(task.batch_size, fp32_manifest.max_batch_size)
    results: dict[str, tuple[np.ndarray, float]] = {}
    served_by: dict[str, tuple[str, str]] = {}
    for precision in ("fp32", "int8", "bf16", "fp16"):
        where = _report_backend(ctx, task, precision)
        if where is None:
            continue
        if precision == "int8":
            vid, source = result_vid, (INT8_TRT_CALIB if task.method == "trt" else INT8_QUANTIZED)
        else:
            vid, source = task.version_id, None
        predictor = predictor_for_spec(ctx, vid, manifest_of(ctx, vid), where[1], precision,  # type: ignore[arg-type]
                                       batch, source, where[0])  # type: ignore[arg-type]
        outputs, rate = qreport.measure(lambda x, p=predictor: next(iter(p.run(x).values())), arrays, batch)
        results[precision], served_by[precision] = (outputs, rate), where
    rep = qreport.build_report(results, qreport.label_indices(labels, fp32_manifest.postprocess.labels),
                               task.drop_threshold_pt)
    rep["eval_images"] = len(arrays)
    for row in rep["precisions"]:
        row["engine"], row["backend"] = served_by[row["precision"]]
    return rep


def _report_backend(ctx: SlotContext, task: CalibTask, precision: str) -> tuple[str, str] | None:
    """Where this worker evaluates ``precision`` for the report: the job's engine, its fastest backend;
    INT8 from a TensorRT table only on TensorRT."""
    try:
        engine, backend = choose(task.engine, "any", precision, ctx.identity.capabilities)
    except PermanentError:
        return None
    if precision == "int8" and task.method == "trt" and backend != "trt":
        return None
    return engine, backend


def check_task(task: CalibTask) -> None:
    """Refuse a task the producer should not have sent (another producer's version, a hand-made
    message) with a reason, before anything is downloaded: a ``KeyError`` here would be retried."""
    if task.method not in calib_contract.METHODS:
        raise CalibrationError(f"unknown calibration method {task.method!r}; choose one of "
                               f"{', '.join(calib_contract.METHODS)}")
    if task.method == "ptq" and task.algo not in calib_contract.PTQ_ALGOS:
        raise CalibrationError(f"unknown PTQ algorithm {task.algo!r}; choose one of "
                               f"{', '.join(calib_contract.PTQ_ALGOS)}")
    if task.batch_size < 1:
        raise CalibrationError(f"calibration batch size {task.batch_size}: send the job again with --batch-size >= 1")
    if not task.payload_keys:
        raise CalibrationError(f"calibration job {task.job_id} carries no calibration images; {task.method} needs at "
                               f"least {calib_contract.MIN_IMAGES[task.method]}: send it again with --images DIR")


def run_calibration(ctx: SlotContext, task: CalibTask) -> dict[str, Any]:
    check_task(task)
    manifest, model_dir = load_manifest(ctx, task.version_id)
    if manifest.quantized:
        raise CalibrationError(f"model {task.model} is already quantized; calibrate its FP32 base")
    # done=failed=0: a retried job counts its calibration images again from the start
    ctx.store.set_fields(task.job_id, state="running", worker=ctx.identity.name, done=0, failed=0)
    arrays, _, bad = decode_set(ctx, task.job_id, task.payload_keys, manifest, task.samples, True)
    warnings = calib_contract.check_count(task.method, len(arrays), bad)
    started = time.perf_counter()
    run = ptq if task.method == "ptq" else (ort_trt if task.engine == "onnxruntime" else trt)
    name, vid = run(ctx, task, manifest, model_dir, arrays)
    out: dict[str, Any] = {"result_name": name, "result_version": vid, "warnings": warnings,
                           "calibration_s": round(time.perf_counter() - started, 3), "samples": len(arrays)}
    if task.eval_payload_keys:
        rep = report(ctx, task, manifest, name, vid)
        rep.update(job_id=task.job_id, method=task.method, algo=task.algo if task.method == "ptq" else "trt-entropy",
                   samples=len(arrays), worker=ctx.identity.name, version_id=vid, version_name=name,
                   source_version=task.version_id, created_s=time.time(), warnings=warnings)
        ctx.conn.set(keys.report(vid), json.dumps(rep))
        out["report"] = rep
    return out
