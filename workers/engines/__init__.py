"""Engines: a predictor spec in, a built predictor out.

``build`` is the one function that builds a predictor: worker pool processes, ``models add``
validation, the GPU self-tests and the benchmarks all call it. It picks the engine the spec names -
Paddle Inference (workers/engines/paddle_engine.py) or ONNX Runtime (workers/engines/ort_engine.py)
- and returns a ``Predictor`` (workers/engines/base.py). Importing this package loads no engine: an
engine is imported on the first build, in the process that will run the predictor.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from common.schemas import Device
from common.spec import PredictorSpec
from workers.engines.base import Predictor


def preload(device: Device, engine_names: Iterable[str]) -> None:
    """Load these engines once in a process that will build predictors (a pool process at start), so
    its first batch does not pay for the import; on a GPU, touch the device first."""
    names = set(engine_names)
    if "paddle" in names:
        from workers.engines import paddle_engine

        paddle_engine.paddle()
        if device == "gpu":
            paddle_engine.init_cuda()
    if "onnxruntime" in names:
        from workers.engines.ort_engine import onnxruntime

        onnxruntime(gpu=device == "gpu")


def build(spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path, check_first_run: bool = True) -> Predictor:
    """Build the predictor ``spec`` describes for the model in ``model_dir``; engine caches (TensorRT
    engines, calibration tables) live in ``opt_cache_dir``. Raises ``ModelError`` for a model the
    engine cannot load and ``PrecisionUnsupportedError`` for what this node cannot run."""
    if spec.engine == "onnxruntime":
        from workers.engines import ort_engine

        return ort_engine.build(spec, model_dir, opt_cache_dir)
    from workers.engines import paddle_engine

    return paddle_engine.build(spec, model_dir, opt_cache_dir, check_first_run)


__all__ = ["Predictor", "build", "preload"]
