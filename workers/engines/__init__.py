"""Engines: a predictor spec in, a built predictor out.

``build`` is the one function that builds a predictor: worker pool processes, ``models add``
validation, the GPU self-test and the benchmarks all call it. It picks the engine that serves the
spec - today Paddle Inference (workers/engines/paddle_engine.py) - and returns a ``Predictor``
(workers/engines/base.py). Importing this package loads no engine: Paddle is imported on the first
build, in the process that will run the predictor.
"""

from __future__ import annotations

from pathlib import Path

from common.schemas import Device
from common.spec import PredictorSpec
from workers.engines.base import Predictor


def preload(device: Device) -> None:
    """Load the engines once in a process that will build predictors (a pool process at start), so
    its first batch does not pay for the import; on a GPU, touch the device first."""
    from workers.engines import paddle_engine

    paddle_engine.paddle()
    if device == "gpu":
        paddle_engine.init_cuda()


def build(spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path, check_first_run: bool = True) -> Predictor:
    """Build the predictor ``spec`` describes for the model in ``model_dir``; engine caches (TensorRT
    engines, calibration tables) live in ``opt_cache_dir``. Raises ``ModelError`` for a model the
    engine cannot load and ``PrecisionUnsupportedError`` for what this node cannot run."""
    from workers.engines import paddle_engine

    return paddle_engine.build(spec, model_dir, opt_cache_dir, check_first_run)


__all__ = ["Predictor", "build", "preload"]
