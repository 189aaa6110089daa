"""The one place that turns a ``PredictorSpec`` into ``paddle.inference.Config`` calls.

Kept thin on purpose: every decision is made (and unit tested) in ``common/spec.py``; this file
only maps fields to calls, in the order Paddle's TensorRT low-precision guide uses.

Cache layout Paddle reads and writes (Paddle 2.6.2, checked against its ir_pass_manager.cc and
analysis_predictor.cc):

* with ``set_optim_cache_dir(D)``: serialized engines ``D/trt_serialized_<engine key>`` and the
  INT8 calibration table read from ``D/trt_calib_<calibration key>``;
* calibration tables produced in ``use_calib_mode`` are written, when the predictor is destroyed,
  to ``<model dir>/_opt_cache/trt_calib_<calibration key>`` whatever the cache dir is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.manifest import MODEL_FILE, PARAMS_FILE
from common.spec import PredictorSpec
from workers.engines.paddle_import import inference

CALIB_PREFIX = "trt_calib_"
MODEL_OPT_CACHE = "_opt_cache"


def new_config(model_dir: Path) -> Any:
    return inference().Config(str(model_dir / MODEL_FILE), str(model_dir / PARAMS_FILE))


def apply(spec: PredictorSpec, config: Any, opt_cache_dir: Path) -> Any:
    """Configure ``config`` for ``spec``; returns it. Raises whatever Paddle raises."""
    paddle_infer = inference()
    config.switch_ir_optim(spec.ir_optim)
    config.disable_glog_info()
    if spec.device == "cpu":
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(spec.cpu_threads)
        config.enable_mkldnn()
        if spec.precision == "int8":
            config.enable_mkldnn_int8()
        elif spec.precision == "bf16":
            config.enable_mkldnn_bfloat16()
        # Reuse intermediate buffers, as on GPUs: ResNet50 holds 672 MB instead of 1197 MB after a
        # batch of 16, 2.5 GB instead of 3.5 GB after 64, with identical outputs (bench/memory.py).
        config.enable_memory_optim()
    else:
        config.enable_use_gpu(spec.gpu_memory_pool_mb, spec.gpu_id)
        config.enable_memory_optim()
        if spec.trt is not None:
            trt = spec.trt
            config.enable_tensorrt_engine(
                workspace_size=trt.workspace_size,
                max_batch_size=trt.max_batch_size,
                min_subgraph_size=trt.min_subgraph_size,
                precision_mode=getattr(paddle_infer.PrecisionType, trt.precision_mode),
                use_static=trt.use_static,
                use_calib_mode=trt.use_calib_mode,
            )
            config.set_trt_dynamic_shape_info({trt.input_name: list(trt.min_shape)},
                                              {trt.input_name: list(trt.max_shape)},
                                              {trt.input_name: list(trt.opt_shape)})
    opt_cache_dir.mkdir(parents=True, exist_ok=True)
    config.set_optim_cache_dir(str(opt_cache_dir))
    return config


def calib_tables_written(model_dir: Path) -> dict[str, Path]:
    """Calibration tables Paddle wrote for a model folder: {file name: path}."""
    folder = model_dir / MODEL_OPT_CACHE
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.glob(f"{CALIB_PREFIX}*")) if p.stat().st_size > 0}
