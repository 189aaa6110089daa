"""Conversions to ONNX, and the check that decides whether a conversion may be published.

* Paddle program -> ONNX: paddle2onnx 1.3.1 (the last release that works with paddlepaddle 2.6.2;
  2.x needs Paddle 3). A quantized program (our PTQ output, a PaddleSlim PTQ/QAT model) becomes a
  QDQ model (``deploy_backend="onnxruntime"``).
* ONNX FP32 -> FP16: ONNX Runtime's float16 converter with ``keep_io_types`` (float32 in and out).

``check`` compares a converted model, run on ONNX Runtime's CPU EP, with the source's own outputs
on the same inputs. Tolerances (relative L2 of the outputs, and top-1 agreement) and why:

* fp32: rel L2 <= 1e-4, top-1 100 %. The conversion changes kernels (oneDNN -> MLAS), not math:
  measured 3.4e-7..6.4e-7 on digits, ResNet50 and MobileNetV2. A wrong operator or layout gives
  errors of order 1e-1 and up, so 1e-4 leaves 150x headroom and still catches any real fault.
* fp16: rel L2 <= 1e-2. FP16 rounds to 11 significant bits (5e-4 relative per operation); measured
  3.0e-4 (CPU EP) and 9.3e-4 (CUDA EP, H200) on digits. Top-1 agreement is reported, not gated: on
  random inputs an untrained network's top scores are often near-ties that FP16 may reorder.
* qdq (INT8) against Paddle's own INT8 execution of the same quantized program (oneDNN): both
  approximate the program's fake-quant arithmetic with different rounding and fusion; measured rel L2
  0.015 (random images) and 0.020 (200 held-out digits), top-1 99.5-100 %. Gate: rel L2 <= 0.1,
  top-1 >= 90 %.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConversionError
from common.manifest import MODEL_FILE, ONNX_FILE, PARAMS_FILE

OPSET = 13


@dataclass(frozen=True)
class Tolerance:
    rel_l2: float
    top1: float | None  # None: reported, not gated


TOLERANCES = {"fp32": Tolerance(1e-4, 1.0), "fp16": Tolerance(1e-2, None), "qdq": Tolerance(0.1, 0.9)}


def tool_versions() -> dict[str, str]:
    out = {}
    for dist in ("paddle2onnx", "onnx", "onnxruntime", "onnxruntime-gpu", "paddlepaddle", "paddlepaddle-gpu"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def paddle_to_onnx(model_dir: Path, out_dir: Path) -> Path:
    """The program as ONNX; a quantized program's quantize/dequantize pairs become QDQ nodes (what
    ``deploy_backend="onnxruntime"`` gives; "tensorrt" would drop them for a calibration cache)."""
    from workers.engines.paddle_import import paddle

    paddle()  # zlib first, then paddle: paddle2onnx's wrapper imports it
    import paddle2onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ONNX_FILE
    try:
        paddle2onnx.export(str(model_dir / MODEL_FILE), str(model_dir / PARAMS_FILE), str(target),
                           opset_version=OPSET, enable_onnx_checker=True, deploy_backend="onnxruntime")
    except Exception as exc:
        raise ConversionError(f"paddle2onnx could not convert the model: {type(exc).__name__}: {exc}") from exc
    if not target.is_file() or target.stat().st_size == 0:
        raise ConversionError("paddle2onnx wrote no model (an operator it does not support?)")
    return target


def to_fp16(src: Path, out_dir: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ONNX_FILE
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def run_cpu(model: Path, inputs: np.ndarray) -> np.ndarray:
    """The first output of ``model`` on ONNX Runtime's CPU EP."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def check(variant: str, reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """The comparison report; raises ``ConversionError`` (with the report) past the tolerance."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = got.reshape(len(got), -1).astype(np.float64)
    if ref.shape != out.shape:
        raise ConversionError(f"{variant} ONNX output has shape {list(got.shape)}, the source {list(reference.shape)}")
    tol = TOLERANCES[variant]
    report = {"variant": variant, "samples": len(ref),
              "rel_l2": float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12)),
              "max_abs_diff": float(np.abs(out - ref).max()),
              "top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
              "tolerance": {"rel_l2": tol.rel_l2, "top1_agreement": tol.top1}}
    if not np.isfinite(report["rel_l2"]) or report["rel_l2"] > tol.rel_l2 or (
            tol.top1 is not None and report["top1_agreement"] < tol.top1):
        raise ConversionError(
            f"the {variant} ONNX form does not match the source: relative L2 {report['rel_l2']:.3g} "
            f"(tolerance {tol.rel_l2:g}), top-1 agreement {report['top1_agreement'] * 100:.1f} %"
            + (f" (tolerance {tol.top1 * 100:.0f} %)" if tol.top1 is not None else "")
            + f", max |diff| {report['max_abs_diff']:.3g} on {report['samples']} inputs; not published")
    return report
