"""Build, warm up, run and tear down Paddle Inference predictors, and cache them per process.

A predictor is built inside a Celery child process (after the fork), from a ``PredictorSpec``,
and cached under the spec's key - that is, per (model version, backend, precision, device,
shape range). Building is separate from running so warm start (``--warm``) and calibration can
reuse the same steps.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import zlib  # noqa: F401  # before paddle (paddlepaddle 2.6.2 segfaults on first zlib use otherwise)
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.errors import ModelError, PrecisionUnsupportedError
from workers import paddle_config
from workers.spec import PredictorSpec

log = logging.getLogger("trtbatch.predictors")



def set_openmp_env() -> None:
    """Paddle's CPU kernels run on Intel OpenMP, whose threads spin for 200 ms after each parallel
    region by default. Pipeline slots and decode threads share the cores, so spinning threads of an
    idle predictor slow the busy one. 1 ms keeps a predictor at full speed (0 costs ~20 % on
    MobileNetV2) and frees the cores right after a batch. Must run before Paddle is imported (the
    worker's main process calls it before forking); an operator's own value wins."""
    os.environ.setdefault("KMP_BLOCKTIME", "1")


set_openmp_env()

_TRT_MISSING = ("please compile with tensorrt", "tensorrt dynamic library is not found",
                "tensorrt is needed")


class Predictor:
    def __init__(self, spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path) -> None:
        self.spec = spec
        self.model_dir = model_dir
        self.opt_cache_dir = opt_cache_dir
        started = time.perf_counter()
        self._pred = _create(spec, model_dir, opt_cache_dir)
        self.build_s = time.perf_counter() - started
        self.input_name = self._pred.get_input_names()[0]
        self.output_names = list(self._pred.get_output_names())
        self._input = self._pred.get_input_handle(self.input_name)
        self._outputs = [self._pred.get_output_handle(n) for n in self.output_names]
        self.runs = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One forward pass; the outputs are copies owned by the caller."""
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self._pred.run()
        self.runs += 1
        return {name: h.copy_to_cpu() for name, h in zip(self.output_names, self._outputs, strict=True)}

    def warm(self, batch_sizes: tuple[int, ...], chw: tuple[int, int, int], repeats: int = 2) -> float:
        """Run zeros through every batch size (builds TensorRT profiles); returns seconds spent."""
        started = time.perf_counter()
        for n in batch_sizes:
            for _ in range(repeats):
                self.run(np.zeros((n, *chw), np.float32))
        return time.perf_counter() - started

    def close(self) -> None:
        """Destroy the native predictor; this is when Paddle writes TensorRT calibration tables."""
        self._input = None
        self._outputs = []
        self._pred = None
        gc.collect()


def _create(spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path):
    import paddle.inference as paddle_infer

    try:
        config = paddle_config.apply(spec, paddle_config.new_config(model_dir), opt_cache_dir)
        return paddle_infer.create_predictor(config)
    except (RuntimeError, ValueError, OSError) as exc:
        text = str(exc)
        if any(marker in text.lower() for marker in _TRT_MISSING):
            raise PrecisionUnsupportedError(
                f"cannot build the {spec.backend}/{spec.precision} predictor: TensorRT is not usable "
                f"on this node ({_first_line(text)})") from exc
        raise ModelError(f"cannot build the {spec.backend}/{spec.precision} predictor for "
                         f"{spec.version_id}: {_first_line(text)}") from exc


def _first_line(text: str) -> str:
    """The informative part of a Paddle error: its error lines (Paddle puts the cause after a
    generic '[operator < x > error]' line), without the C++ stack."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    picked = [ln for ln in lines if "rror" in ln and not ln.startswith(("File ", "C++ Traceback"))] or lines
    return " | ".join(picked[:4])[:800] if picked else text[:800]


def init_cuda() -> None:
    """Query the device once in a fresh GPU worker process before any predictor exists. Paddle
    2.6.2's CUDA 11.8 build on Hopper cards can fail the first predictor of a process (CUDA error
    209, "no kernel image", or an operator error with no detail) and run the next; measured on H200:
    after these queries the first predictor ran, after a dygraph op instead it failed."""
    import paddle

    try:
        paddle.device.cuda.device_count()
        paddle.device.cuda.get_device_name(0)
        paddle.device.cuda.get_device_capability(0)
    except Exception as exc:
        log.warning("first CUDA use of this process failed (%s); continuing", _first_line(str(exc)))


def build_checked(spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path) -> Predictor:
    """Build, and on a GPU run one tiny batch at once; a GPU predictor whose build or first run
    fails is rebuilt (twice at most, see ``init_cuda``) before the batch fails."""
    if spec.device != "gpu":
        return Predictor(spec, model_dir, opt_cache_dir)
    for attempt in (1, 2, 3):
        pred = None
        try:
            pred = Predictor(spec, model_dir, opt_cache_dir)
            shape = [1 if d < 0 else d for d in spec.input_shape]
            pred.run(np.zeros(shape, np.float32))
            return pred
        except Exception as exc:
            if pred is not None:
                pred.close()
            log.error("building the %s/%s predictor failed (attempt %d, thread %s): %s", spec.backend,
                      spec.precision, attempt, threading.current_thread().name, str(exc)[-1500:])
            if attempt == 3:
                if isinstance(exc, (ModelError, PrecisionUnsupportedError)):
                    raise
                raise ModelError(f"the {spec.backend}/{spec.precision} predictor failed its first run: "
                                 f"{_first_line(str(exc))}") from exc
    raise AssertionError("unreachable")


class PredictorCache:
    """Per-process LRU of predictors keyed by ``spec.key()``; building is serialised."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path,
            on_build: Callable[[float], None] | None = None) -> Predictor:
        key = spec.key()
        with self._lock:
            pred = self._items.get(key)
            if pred is not None:
                self._items.move_to_end(key)
                return pred
            pred = build_checked(spec, model_dir, opt_cache_dir)
            log.info("built %s/%s predictor for %s in %.2fs", spec.backend, spec.precision,
                     spec.version_id, pred.build_s)
            if on_build is not None:
                on_build(pred.build_s)
            self._items[key] = pred
            while len(self._items) > self.capacity:
                _, old = self._items.popitem(last=False)
                old.close()
            return pred

    def loaded(self) -> list[dict[str, object]]:
        return [{"version": p.spec.version_id, "backend": p.spec.backend, "precision": p.spec.precision,
                 "build_s": round(p.build_s, 3), "runs": p.runs} for p in self._items.values()]

    def close(self) -> None:
        with self._lock:
            while self._items:
                self._items.popitem()[1].close()
