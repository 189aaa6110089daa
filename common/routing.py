"""Routing by capability: which queue a job goes to, and which queues a worker listens on.

A *capability* is a (backend, precision) pair a node can build a predictor for:

* ``cpu``  - Paddle Inference on CPU with oneDNN: fp32, int8 (quantized models), bf16 (CPUs with
  AVX512-BF16 or AMX).
* ``gpu``  - native CUDA: fp32 only (native FP16 does not take effect in Paddle 2.6.2).
* ``trt``  - TensorRT subgraphs: fp32, fp16 (``PrecisionType.Half``), int8 (``PrecisionType.Int8``).

A job names a precision and a *target*: one backend, or ``any``. Its queue is
``trtbatch.<target>.<precision>``. A worker listens on ``trtbatch.<backend>.<precision>`` and
``trtbatch.any.<precision>`` for every capability it has, so a job waits only on workers that
can serve it, and ``any`` jobs are shared by every capable worker (GPUs simply pull faster).
"""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import PrecisionUnsupportedError

PRECISIONS = ("fp32", "fp16", "int8", "bf16")
BACKENDS = ("cpu", "gpu", "trt")
TARGETS = ("any", *BACKENDS)
QUEUE_PREFIX = "trtbatch"
CALIBRATION_QUEUE_SUFFIX = "calib"

#: What each backend can ever serve, before node-specific checks.
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "cpu": ("fp32", "int8", "bf16"),
    "gpu": ("fp32",),
    "trt": ("fp32", "fp16", "int8"),
}

#: Where an INT8 predictor's scales come from.
INT8_QUANTIZED = "quantized-model"  # QDQ ops in the program (offline quantization or QAT)
INT8_TRT_CALIB = "trt-calib"  # an FP32 program plus a TensorRT calibration table

#: Backend preference of a worker serving an ``any`` job: fastest first.
BACKEND_PREFERENCE = ("trt", "gpu", "cpu")

_WHY_NOT = {
    ("gpu", "fp16"): "native GPU FP16 does not take effect in Paddle 2.6.2; use --backend trt",
    ("gpu", "int8"): "INT8 on GPU runs through TensorRT; use --backend trt",
    ("gpu", "bf16"): "bf16 runs on CPU (oneDNN) only; use --backend cpu",
    ("trt", "bf16"): "TensorRT 8.5 (Paddle 2.6.2) has no bf16 mode; use --backend cpu",
    ("cpu", "fp16"): "FP16 needs TensorRT on a GPU; use --backend trt",
}


def check_request(target: str, precision: str) -> None:
    """Reject a (target, precision) pair no node of any kind could ever serve."""
    if target not in TARGETS:
        raise PrecisionUnsupportedError(f"unknown backend {target!r}; choose one of {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise PrecisionUnsupportedError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if target != "any" and precision not in BACKEND_PRECISIONS[target]:
        reason = _WHY_NOT.get((target, precision), "not supported")
        raise PrecisionUnsupportedError(f"{target} cannot serve {precision}: {reason}")


def job_queue(target: str, precision: str) -> str:
    check_request(target, precision)
    return f"{QUEUE_PREFIX}.{target}.{precision}"


def calibration_queue(method: str) -> str:
    """Calibration jobs: ``ptq`` runs on any worker (Paddle's CPU executor), ``trt`` needs TensorRT."""
    return f"{QUEUE_PREFIX}.{'trt' if method == 'trt' else 'any'}.{CALIBRATION_QUEUE_SUFFIX}"


def parse_queue(queue: str) -> tuple[str, str]:
    """``trtbatch.trt.int8`` -> ("trt", "int8")."""
    parts = queue.split(".")
    if len(parts) != 3 or parts[0] != QUEUE_PREFIX:
        raise ValueError(f"not a trtbatch queue: {queue!r}")
    return parts[1], parts[2]


def worker_queues(capabilities: Iterable[tuple[str, str]]) -> list[str]:
    """Queues a worker with these (backend, precision) capabilities listens on, stable order."""
    caps = set(capabilities)
    queues: list[str] = []
    for backend, precision in sorted(caps):
        for target in (backend, "any"):
            name = f"{QUEUE_PREFIX}.{target}.{precision}"
            if name not in queues:
                queues.append(name)
    if caps:
        queues.append(calibration_queue("ptq"))
    if any(b == "trt" for b, _ in caps):
        queues.append(calibration_queue("trt"))
    return queues


def choose_backend(target: str, precision: str, capabilities: Iterable[tuple[str, str]]) -> str:
    """Which backend this worker uses for a job; raises if it has none that fits."""
    caps = set(capabilities)
    candidates = BACKEND_PREFERENCE if target == "any" else (target,)
    for backend in candidates:
        if (backend, precision) in caps:
            return backend
    have = ", ".join(f"{b}/{p}" for b, p in sorted(caps)) or "nothing"
    raise PrecisionUnsupportedError(
        f"this worker cannot serve {precision} on backend {target} (it serves: {have})")


def queue_servable(queue: str, capabilities: Iterable[tuple[str, str]]) -> bool:
    target, precision = parse_queue(queue)
    caps = set(capabilities)
    if precision == CALIBRATION_QUEUE_SUFFIX:
        return bool(caps) if target == "any" else any(b == target for b, _ in caps)
    if target == "any":
        return any(p == precision for _, p in caps)
    return (target, precision) in caps
