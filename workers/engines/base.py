"""What every engine provides: a ``Predictor`` built from a ``PredictorSpec``.

The pipeline (workers/pipeline/) and the tools (validation, self-test, benchmarks) only ever see
this interface, so a second engine is one new module plus an entry in
``workers/engines/__init__.py``. A predictor is built in the process that runs it (a worker's pool
process, after the fork), runs one batch at a time, and owns its outputs' memory only until
``run`` returns copies.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from common.spec import PredictorSpec


class Predictor(ABC):
    """One built predictor. Subclasses set the attributes in ``__init__`` and implement ``run`` and
    ``close``."""

    spec: PredictorSpec
    model_dir: Path
    opt_cache_dir: Path
    #: The program's input names (trtbatch serves single-input models: ``input_names[0]``).
    input_names: list[str]
    output_names: list[str]
    build_s: float = 0.0
    runs: int = 0
    #: whether ``run_device`` takes a batch already in device memory (a CUDA array)
    accepts_device_input: bool = False

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One forward pass on a float32 NCHW batch; the outputs are copies owned by the caller."""

    def run_device(self, tensor: object) -> dict[str, np.ndarray]:
        """One forward pass on a float32 NCHW batch in device memory (``__cuda_array_interface__``)."""
        raise TypeError(f"the {self.spec.engine} {self.spec.backend} predictor takes host batches only")

    @abstractmethod
    def close(self) -> None:
        """Release the native predictor (Paddle writes TensorRT calibration tables at this point)."""

    def warm(self, batch_sizes: tuple[int, ...], chw: tuple[int, int, int], repeats: int = 2) -> float:
        """Run zeros through every batch size (builds TensorRT profiles); returns seconds spent."""
        started = time.perf_counter()
        for n in batch_sizes:
            for _ in range(repeats):
                self.run(np.zeros((n, *chw), np.float32))
        return time.perf_counter() - started

    def describe(self) -> dict[str, object]:
        """What the fleet view shows about a loaded predictor."""
        return {"version": self.spec.version_id, "backend": self.spec.backend, "precision": self.spec.precision,
                "build_s": round(self.build_s, 3), "runs": self.runs}
