"""INT8 calibration with Paddle, both routes of Paddle's TensorRT low-precision guide.

* ``ptq`` (route b, offline quantization): ``paddle.static.quantization.PostTrainingQuantization``
  - what PaddleSlim's ``quant_post_static`` wraps - on the CPU executor, so any worker can run it.
  The quantized program is published as a new model version ``<name>@int8-ptq`` with provenance.
* ``trt`` (route a, TensorRT's own calibration): the FP32 program is built with ``Int8`` and
  ``use_calib_mode=True``, fed the calibration images, and destroyed - which is when Paddle writes
  ``<model dir>/_opt_cache/trt_calib_<key>``. Those tables are published under the model version
  and the spec's ``calib_key()``; every worker that later builds the same INT8 spec installs them
  into the optimisation cache directory Paddle reads (``<opt dir>/trt_calib_<key>``) first, so the
  fleet calibrates once (the table store is common/calibration.py). ``run_trt_calibration`` is
  the only TensorRT-only step.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.calibration import PTQ_ALGOS
from common.errors import CalibrationError
from common.manifest import MODEL_FILE, PARAMS_FILE, ModelManifest
from common.repo import quantized_name
from common.spec import PredictorSpec
from workers import engines
from workers.engines import paddle_config
from workers.engines.paddle_import import paddle as load_paddle

QUANTIZABLE_OPS = ["conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2"]


# -- route b: offline quantization --------------------------------------------------------------
class _CalibLoader:
    """PostTrainingQuantization asserts a DataLoader and calls it; it ignores batch_generator."""

    def __init__(self, feed_name: str, batches: list[np.ndarray]) -> None:
        self.feed_name, self.batches = feed_name, batches

    def __call__(self):
        return ({self.feed_name: b} for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def run_ptq(model_dir: Path, out_dir: Path, feed_name: str, arrays: np.ndarray, algo: str,
            batch_size: int) -> None:
    paddle = load_paddle()
    PostTrainingQuantization = paddle.static.quantization.PostTrainingQuantization

    if algo not in PTQ_ALGOS:
        raise CalibrationError(f"unknown PTQ algorithm {algo!r}; choose one of {', '.join(PTQ_ALGOS)}")
    batches = [arrays[i:i + batch_size] for i in range(0, len(arrays), batch_size)]
    loader = type("Loader", (_CalibLoader, paddle.io.DataLoader), {})(feed_name, batches)
    paddle.enable_static()
    try:
        ptq = PostTrainingQuantization(
            executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=str(model_dir),
            model_filename=MODEL_FILE, params_filename=PARAMS_FILE, data_loader=loader,
            batch_size=batch_size, batch_nums=len(batches), algo=algo,
            quantizable_op_type=QUANTIZABLE_OPS, onnx_format=True)
        ptq.quantize()
        ptq.save_quantized_model(str(out_dir), MODEL_FILE, PARAMS_FILE)
    finally:
        paddle.disable_static()


def quantized_manifest(manifest: ModelManifest, base: str, provenance: dict[str, Any]) -> ModelManifest:
    return dataclasses.replace(manifest, name=quantized_name(base), quantized=True, base=base,
                               provenance=provenance, metrics={},
                               description=f"INT8 ({provenance.get('method')}/{provenance.get('algo')}) of {base}")


def provenance(method: str, algo: str, samples: int, calib_sha256: str, source_version: str,
               worker: str) -> dict[str, Any]:
    return {"method": method, "algo": algo, "samples": samples, "calibration_sha256": calib_sha256,
            "source_version": source_version, "paddle_version": load_paddle().__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "worker": worker}


# -- route a: TensorRT calibration tables ---------------------------------------------------------
def calibration_run_spec(serving: PredictorSpec) -> PredictorSpec:
    """The spec of the calibration predictor: the serving spec with ``use_static`` off (the guide's
    calibration config), so no half-calibrated engine is ever serialized. Same ``calib_key()``."""
    if serving.trt is None or not serving.trt.use_calib_mode:
        raise CalibrationError("TensorRT calibration needs a trt/int8 spec with use_calib_mode=True")
    return dataclasses.replace(serving, trt=dataclasses.replace(serving.trt, use_static=False))


def private_model_dir(model_dir: Path, work: Path) -> Path:
    """A folder with links to the model files: Paddle writes ``_opt_cache/`` beside the program,
    and the shared materialised version must stay untouched."""
    dest = work / "model"
    dest.mkdir(parents=True, exist_ok=True)
    for fname in (MODEL_FILE, PARAMS_FILE):
        target = dest / fname
        if not target.exists():
            try:
                os.link(model_dir / fname, target)
            except OSError:
                shutil.copyfile(model_dir / fname, target)
    return dest


def run_trt_calibration(spec: PredictorSpec, model_dir: Path, opt_dir: Path, arrays: np.ndarray,
                        batch_size: int) -> None:
    """The TensorRT-only step: run the calibration predictor over every batch, then destroy it
    (Paddle writes the tables in the predictor's destructor)."""
    predictor = engines.build(spec, model_dir, opt_dir, check_first_run=False)
    try:
        for start in range(0, len(arrays), batch_size):
            predictor.run(arrays[start:start + batch_size])
    finally:
        predictor.close()


def collect_tables(private_dir: Path) -> dict[str, Path]:
    tables = paddle_config.calib_tables_written(private_dir)
    if not tables:
        raise CalibrationError(f"TensorRT wrote no calibration table under {private_dir / '_opt_cache'}; "
                               "did any subgraph run in TensorRT (min_subgraph_size)?")
    return tables


