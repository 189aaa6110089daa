"""The one place that turns a ``PredictorSpec`` into an ONNX Runtime session's settings.

``session_args`` is pure - every decision was made in ``common/spec.py`` (``OrtSettings``); this maps
it to ONNX Runtime's names, so each branch, the TensorRT EP's included, is unit tested on a machine
without a GPU or TensorRT. ``make_session`` (workers/engines/ort_engine.py) applies it.

TensorRT EP options follow Paddle's TensorRT low-precision guide: ``trt_max_workspace_size`` 1<<30,
``trt_min_subgraph_size`` 5, FP16/INT8 flags; INT8 from a QDQ model (no table: TensorRT refuses a
table for a model with Q/DQ nodes) or from a calibration table written by ONNX Runtime's calibrator
(``trt_int8_use_native_calibration_table`` 0); engine and timing caches on, in the spec's engine
cache folder (keyed like Paddle-TRT's: version, precision, GPU name and compute capability,
TensorRT version, batch profile); the profile's min/opt/max shapes come from the job's batch size.
Nodes TensorRT does not take run on the CUDA EP listed after it (ONNX Runtime's normal partition,
what Paddle-TRT does with ``min_subgraph_size``); a session that lost its requested provider is an
error (workers/engines/ort_engine.py), never a quiet fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.node import CPU_EP, CUDA_EP, TRT_EP
from common.spec import ORT_CALIBRATION_TABLE, OrtSettings, PredictorSpec, TrtSettings


@dataclass(frozen=True)
class SessionArgs:
    #: SessionOptions attributes to set (name -> value)
    options: dict[str, Any]
    #: execution providers with their options, first choice first
    providers: list[tuple[str, dict[str, str]]]


def _shapes(trt: TrtSettings, shape: tuple[int, ...]) -> str:
    return f"{trt.input_name}:{'x'.join(str(d) for d in shape)}"


def trt_options(spec: PredictorSpec, ort: OrtSettings, cache_dir: Path) -> dict[str, str]:
    trt = ort.trt
    if trt is None:
        raise ValueError("a TensorRT EP spec needs TensorRT settings")
    opts = {
        "device_id": str(spec.gpu_id),
        "trt_max_workspace_size": str(trt.workspace_size),
        "trt_min_subgraph_size": str(trt.min_subgraph_size),
        "trt_fp16_enable": "1" if ort.trt_fp16 else "0",
        "trt_int8_enable": "1" if ort.trt_int8 else "0",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": _shapes(trt, trt.min_shape),
        "trt_profile_opt_shapes": _shapes(trt, trt.opt_shape),
        "trt_profile_max_shapes": _shapes(trt, trt.max_shape),
    }
    if ort.trt_calibration_table:  # the FP32 model plus ONNX Runtime's table, in the cache folder
        opts["trt_int8_calibration_table_name"] = ORT_CALIBRATION_TABLE
        opts["trt_int8_use_native_calibration_table"] = "0"
    return opts


def cuda_options(spec: PredictorSpec, ort: OrtSettings) -> dict[str, str]:
    # kSameAsRequested: the arena grows by what a run needs, not by doubling (bounded device memory)
    return {"device_id": str(spec.gpu_id), "prefer_nhwc": "1" if ort.prefer_nhwc else "0",
            "arena_extend_strategy": "kSameAsRequested"}


def session_args(spec: PredictorSpec, cache_dir: Path, optimized_model: Path | None = None) -> SessionArgs:
    """What to create an InferenceSession for ``spec`` with. ``optimized_model``: where ONNX Runtime
    writes the graph it will run (to check that an INT8 model got integer kernels)."""
    ort = spec.ort
    if spec.engine != "onnxruntime" or ort is None:
        raise ValueError("not an onnxruntime spec")
    options: dict[str, Any] = {"graph_optimization_level": "ORT_ENABLE_ALL",
                               "intra_op_num_threads": ort.intra_op_threads if ort.provider == CPU_EP else 1,
                               "inter_op_num_threads": 1, "log_severity_level": 3}
    if optimized_model is not None:
        options["optimized_model_filepath"] = str(optimized_model)
    if ort.provider == CPU_EP:
        return SessionArgs(options, [(CPU_EP, {})])
    if ort.provider == CUDA_EP:
        return SessionArgs(options, [(CUDA_EP, cuda_options(spec, ort)), (CPU_EP, {})])
    if ort.provider == TRT_EP:
        return SessionArgs(options, [(TRT_EP, trt_options(spec, ort, cache_dir)),
                                     (CUDA_EP, cuda_options(spec, ort)), (CPU_EP, {})])
    raise ValueError(f"unknown execution provider {ort.provider!r}")
