"""The Paddle Inference engine: build, run and tear down predictors from a ``PredictorSpec``.

A predictor is built inside the process that runs it (a worker's pool process, after the fork);
``workers/engines/paddle_config.apply`` turns the spec into ``paddle.inference.Config`` calls. On a
GPU a new predictor runs one tiny batch at once and is rebuilt if that fails (``build``).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from common.errors import ModelError, PrecisionUnsupportedError
from common.spec import PredictorSpec
from workers.engines import paddle_config
from workers.engines.base import Predictor
from workers.engines.paddle_import import inference, paddle

log = logging.getLogger("trtbatch.engines.paddle")


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


class PaddlePredictor(Predictor):
    def __init__(self, spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path) -> None:
        self.spec = spec
        self.model_dir = model_dir
        self.opt_cache_dir = opt_cache_dir
        started = time.perf_counter()
        self._native()
        self.build_s = time.perf_counter() - started
        self.input_names = list(self._pred.get_input_names())
        self.output_names = list(self._pred.get_output_names())
        self.runs = 0
        _LIVE.add(self)

    def _native(self) -> None:
        """(Re)create the native predictor and its input and output handles."""
        self._drop_native()
        self._pred = _create(self.spec, self.model_dir, self.opt_cache_dir)
        self._input = self._pred.get_input_handle(self._pred.get_input_names()[0])
        self._outputs = [self._pred.get_output_handle(n) for n in self._pred.get_output_names()]

    def _drop_native(self) -> None:
        self._input = None
        self._outputs: list = []
        self._pred = None
        self._planned_batch = 0  # the batch size it first ran: its memory reuse is planned for it
        self._held_batch = 0  # the batch size its intermediate tensors are sized for (0: none)

    def _fit(self, n: int) -> None:
        """Make the predictor's memory fit a batch of ``n``. Paddle plans a predictor's memory reuse
        at the first batch size it runs; a later size (or the same one after its tensors were freed)
        gets tensors of its own, kept beside the planned ones (ResNet50 on CPU: 8.0 GB for a batch of
        256 run after one of 16, 3.6 GB for a fresh predictor, which also ran twice as fast). So a CPU
        predictor is rebuilt for a batch larger than any it ran (0.3 s for ResNet50 FP32, 1.3 s INT8);
        a smaller batch - a job's last, a client's own size - only frees the larger one's intermediate
        tensors first, as on a GPU or a TensorRT engine (costly builds): rebuilding for every change of
        size made ResNet50 INT8 batches of 16 and 12 in turn take 1,449 ms each instead of 149."""
        if self._pred is None or (self.spec.device == "cpu" and 0 < self._planned_batch < n):
            self._native()
        elif self._held_batch and n < self._held_batch:
            self._pred.clear_intermediate_tensor()
        self._planned_batch = self._planned_batch or n
        self._held_batch = n

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One forward pass; the outputs are copies owned by the caller."""
        self._fit(batch.shape[0])
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self._pred.run()
        self.runs += 1
        return {name: h.copy_to_cpu() for name, h in zip(self.output_names, self._outputs, strict=True)}

    def release_memory(self) -> None:
        """Free what the last batch left behind while the predictor waits for work. On a CPU the
        native predictor goes (rebuilt, with a fresh memory plan, by the next batch: see ``_fit``);
        elsewhere its intermediate tensors and the allocator's cached chunks (host and GPU) go."""
        if self._pred is None:
            return
        if self.spec.device == "cpu":
            self._drop_native()
            return
        self._pred.clear_intermediate_tensor()
        self._pred.try_shrink_memory()
        self._held_batch = 0

    def close(self) -> None:
        """Destroy the native predictor; this is when Paddle writes TensorRT calibration tables."""
        _LIVE.discard(self)
        self._drop_native()
        gc.collect()


#: Every Paddle predictor alive in this process, whoever holds it (a slot's cache, a calibration run).
_LIVE: weakref.WeakSet[PaddlePredictor] = weakref.WeakSet()


def release_memory() -> int:
    """``release_memory`` on every Paddle predictor of this process; returns how many. Only while none
    runs (a pool process between batches)."""
    live = list(_LIVE)
    for pred in live:
        pred.release_memory()
    return len(live)


def _create(spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path):
    try:
        config = paddle_config.apply(spec, paddle_config.new_config(model_dir), opt_cache_dir)
        return inference().create_predictor(config)
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
    try:
        device = paddle().device
        device.cuda.device_count()
        device.cuda.get_device_name(0)
        device.cuda.get_device_capability(0)
    except Exception as exc:
        log.warning("first CUDA use of this process failed (%s); continuing", _first_line(str(exc)))


def build(spec: PredictorSpec, model_dir: Path, opt_cache_dir: Path, check_first_run: bool = True
          ) -> PaddlePredictor:
    """Build, and on a GPU run one tiny batch at once; a GPU predictor whose build or first run
    fails is rebuilt (twice at most, see ``init_cuda``) before the batch fails. ``check_first_run``
    off: no extra batch (a TensorRT calibration run must see only calibration images)."""
    if spec.device != "gpu" or not check_first_run:
        return PaddlePredictor(spec, model_dir, opt_cache_dir)
    for attempt in (1, 2, 3):
        pred = None
        try:
            pred = PaddlePredictor(spec, model_dir, opt_cache_dir)
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
