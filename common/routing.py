"""Routing by capability: which queue a job goes to, and which queues a worker listens on.

A *capability* is an (engine, backend, precision) triple a node can build a predictor for:

* engine ``paddle`` (Paddle Inference 2.6.2):
  ``cpu`` - oneDNN: fp32, int8 (quantized models), bf16 (CPUs with AVX512-BF16 or AMX);
  ``gpu`` - native CUDA: fp32 only (native FP16 does not take effect in Paddle 2.6.2);
  ``trt`` - Paddle-TensorRT subgraphs: fp32, fp16 (``PrecisionType.Half``), int8 (``Int8``).
* engine ``onnxruntime`` (the model converted by paddle2onnx, or a user's ONNX model):
  ``cpu`` - CPU execution provider: fp32, int8 (a QDQ model, run with integer kernels);
  ``gpu`` - CUDA execution provider: fp32, fp16 (the FP16-converted model). No int8: the CUDA EP
  has no INT8 convolution kernels, a QDQ model would run dequantized and slower than FP32;
  ``trt`` - TensorRT execution provider: fp32, fp16, int8 (QDQ model, or a calibration table).

A job names a precision, an engine (or ``any``) and a backend (or ``any``). Its queue is
``trtbatch.<engine>.<backend>.<precision>``. A worker listens, for every capability it has, on the
four queues that capability can serve (its engine or any, its backend or any), so a job waits only
on workers that can serve it, and ``any`` jobs are shared by every capable worker.

Non-inference work has queues of its own: ``trtbatch.<engine>.<backend>.calib`` (calibration jobs)
and ``trtbatch.<engine>.any.convert`` (conversions to ONNX).
"""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import PrecisionUnsupportedError

PRECISIONS = ("fp32", "fp16", "int8", "bf16")
BACKENDS = ("cpu", "gpu", "trt")
TARGETS = ("any", *BACKENDS)
ENGINES = ("paddle", "onnxruntime")
ENGINE_TARGETS = ("any", *ENGINES)
QUEUE_PREFIX = "trtbatch"
CALIBRATION_QUEUE_SUFFIX = "calib"
CONVERT_QUEUE_SUFFIX = "convert"
WORK_SUFFIXES = (CALIBRATION_QUEUE_SUFFIX, CONVERT_QUEUE_SUFFIX)

Capability = tuple[str, str, str]  # (engine, backend, precision)

#: What each engine's backends can ever serve, before node-specific checks.
ENGINE_PRECISIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "paddle": {"cpu": ("fp32", "int8", "bf16"), "gpu": ("fp32",), "trt": ("fp32", "fp16", "int8")},
    "onnxruntime": {"cpu": ("fp32", "int8"), "gpu": ("fp32", "fp16"), "trt": ("fp32", "fp16", "int8")},
}

#: Where an INT8 predictor's scales come from.
INT8_QUANTIZED = "quantized-model"  # QDQ ops in the program (offline quantization or QAT)
INT8_TRT_CALIB = "trt-calib"  # an FP32 program plus a TensorRT calibration table

#: Who serves an ``any`` job on a worker that can do several: fastest first (TensorRT, then the
#: ONNX Runtime CUDA EP, which is correct on every GPU ONNX Runtime supports, then native Paddle GPU;
#: on CPUs oneDNN INT8 beats the CPU EP's - 92 vs 76 img/s on ResNet50 here).
PREFERENCE: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "trt"), ("paddle", "trt"), ("onnxruntime", "gpu"), ("paddle", "gpu"),
    ("paddle", "cpu"), ("onnxruntime", "cpu"),
)

_WHY_NOT = {
    ("paddle", "gpu", "fp16"): "native GPU FP16 does not take effect in Paddle 2.6.2; use --backend trt "
                               "or --engine onnxruntime",
    ("paddle", "gpu", "int8"): "INT8 on GPU runs through TensorRT; use --backend trt",
    ("paddle", "gpu", "bf16"): "bf16 runs on CPU (oneDNN) only; use --backend cpu",
    ("paddle", "trt", "bf16"): "TensorRT 8.5 (Paddle 2.6.2) has no bf16 mode; use --backend cpu",
    ("paddle", "cpu", "fp16"): "FP16 needs a GPU; use --backend trt or --engine onnxruntime --backend gpu",
    ("onnxruntime", "gpu", "int8"): "ONNX Runtime's CUDA execution provider has no INT8 convolution kernels: "
                                    "a QDQ model would run dequantized, slower than FP32; use --backend trt "
                                    "(TensorRT EP) or --backend cpu (integer kernels)",
    ("onnxruntime", "cpu", "fp16"): "FP16 needs a GPU; use --backend gpu (CUDA EP) or trt",
}


def _why_not(engine: str, backend: str, precision: str) -> str:
    if precision == "bf16" and engine == "onnxruntime":
        return "bf16 is served by Paddle's oneDNN only; use --engine paddle --backend cpu"
    return _WHY_NOT.get((engine, backend, precision), "not supported")


def possible(engine: str, backend: str, precision: str) -> bool:
    """Can any node of any kind ever serve this (engine, backend, precision)? ``any`` matches all."""
    engines = ENGINES if engine == "any" else (engine,)
    backends = BACKENDS if backend == "any" else (backend,)
    return any(precision in ENGINE_PRECISIONS[e][b] for e in engines for b in backends)


def check_request(target: str, precision: str, engine: str = "any") -> None:
    """Reject a request no node of any kind could ever serve, with the reason and what to ask instead."""
    if engine not in ENGINE_TARGETS:
        raise PrecisionUnsupportedError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_TARGETS)}")
    if target not in TARGETS:
        raise PrecisionUnsupportedError(f"unknown backend {target!r}; choose one of {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise PrecisionUnsupportedError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if possible(engine, target, precision):
        return
    if engine != "any" and target != "any":
        reason = _why_not(engine, target, precision)
    elif engine != "any":
        reason = _why_not(engine, "cpu" if precision == "bf16" else "gpu", precision)
    else:
        reason = _why_not("paddle" if precision == "bf16" else "onnxruntime", target, precision)
    where = f"{engine}/{target}" if engine != "any" else target
    raise PrecisionUnsupportedError(f"{where} cannot serve {precision}: {reason}")


def queue_name(engine: str, target: str, what: str) -> str:
    return f"{QUEUE_PREFIX}.{engine}.{target}.{what}"


def job_queue(target: str, precision: str, engine: str = "any") -> str:
    check_request(target, precision, engine)
    return queue_name(engine, target, precision)


def calibration_queue(method: str, engine: str = "paddle") -> str:
    """Calibration jobs. ``ptq`` runs Paddle's offline quantization on any Paddle worker; ``trt`` with
    Paddle needs Paddle-TensorRT; ``trt`` with ONNX Runtime computes the TensorRT table with ONNX
    Runtime's calibrator, which runs on any ONNX Runtime worker (CPU execution provider)."""
    if engine == "paddle":
        return queue_name("paddle", "trt" if method == "trt" else "any", CALIBRATION_QUEUE_SUFFIX)
    return queue_name("onnxruntime", "any", CALIBRATION_QUEUE_SUFFIX)


def convert_queue(source_format: str) -> str:
    """Conversions to ONNX: from a Paddle program on a node with Paddle and paddle2onnx; an ONNX model's
    FP16 variant on any ONNX Runtime node."""
    return queue_name("paddle" if source_format == "paddle" else "onnxruntime", "any", CONVERT_QUEUE_SUFFIX)


def parse_queue(queue: str) -> tuple[str, str, str]:
    """``trtbatch.onnxruntime.trt.int8`` -> ("onnxruntime", "trt", "int8")."""
    parts = queue.split(".")
    if len(parts) != 4 or parts[0] != QUEUE_PREFIX:
        raise ValueError(f"not a trtbatch queue: {queue!r}")
    return parts[1], parts[2], parts[3]


def worker_queues(capabilities: Iterable[Capability], convert_from: Iterable[str] = ()) -> list[str]:
    """Queues a worker with these capabilities listens on, in a stable order; ``convert_from``: the
    model formats it can convert to ONNX (``paddle``: paddle2onnx present; ``onnx``: FP16 variants)."""
    caps = set(capabilities)
    queues: list[str] = []
    for engine, backend, precision in sorted(caps):
        for e in (engine, "any"):
            for b in (backend, "any"):
                name = queue_name(e, b, precision)
                if name not in queues:
                    queues.append(name)
    for engine in ENGINES:
        backends = {b for e, b, _ in caps if e == engine}
        if backends:
            queues.append(calibration_queue("ptq" if engine == "paddle" else "trt", engine))
        if engine == "paddle" and "trt" in backends:
            queues.append(calibration_queue("trt", "paddle"))
    queues += [convert_queue(fmt) for fmt in ("paddle", "onnx") if fmt in set(convert_from)]
    return queues


def choose(engine: str, target: str, precision: str, capabilities: Iterable[Capability]) -> tuple[str, str]:
    """Which (engine, backend) this worker uses for a job; raises if it has none that fits."""
    caps = set(capabilities)
    for e, b in PREFERENCE:
        if engine in ("any", e) and target in ("any", b) and (e, b, precision) in caps:
            return e, b
    have = ", ".join(f"{e}:{b}/{p}" for e, b, p in sorted(caps)) or "nothing"
    raise PrecisionUnsupportedError(
        f"this worker cannot serve {precision} on engine {engine}, backend {target} (it serves: {have})")


def queue_servable(queue: str, capabilities: Iterable[Capability], convert_from: Iterable[str] = ()) -> bool:
    return queue in worker_queues(capabilities, convert_from)
