"""Capability routing: impossible requests, queue names, what a worker listens on, engine/backend choice."""

from __future__ import annotations

import pytest

from common import routing
from common.errors import PrecisionUnsupportedError

CPU = {("paddle", "cpu", "fp32"), ("paddle", "cpu", "int8")}
CPU_BF16 = CPU | {("paddle", "cpu", "bf16")}
ORT_CPU = {("onnxruntime", "cpu", "fp32"), ("onnxruntime", "cpu", "int8")}
TRT = {("paddle", "gpu", "fp32"), ("paddle", "trt", "fp32"), ("paddle", "trt", "fp16"), ("paddle", "trt", "int8")}
ORT_GPU = {("onnxruntime", "gpu", "fp32"), ("onnxruntime", "gpu", "fp16")}
ORT_TRT = ORT_GPU | {("onnxruntime", "trt", p) for p in ("fp32", "fp16", "int8")}


@pytest.mark.parametrize(("engine", "target", "precision", "reason"), [
    ("paddle", "gpu", "fp16", "native GPU FP16 does not take effect in Paddle 2.6.2; use --backend trt or --engine "
                              "onnxruntime"),
    ("paddle", "gpu", "int8", "INT8 on GPU runs through TensorRT; use --backend trt"),
    ("paddle", "gpu", "bf16", "bf16 runs on CPU (oneDNN) only; use --backend cpu"),
    ("paddle", "trt", "bf16", "TensorRT 8.5 (Paddle 2.6.2) has no bf16 mode; use --backend cpu"),
    ("paddle", "cpu", "fp16", "FP16 needs a GPU; use --backend trt or --engine onnxruntime --backend gpu"),
    ("onnxruntime", "gpu", "int8", "ONNX Runtime's CUDA execution provider has no INT8 convolution kernels: a QDQ "
                                   "model would run dequantized, slower than FP32; use --backend trt (TensorRT EP) or "
                                   "--backend cpu (integer kernels)"),
    ("onnxruntime", "cpu", "fp16", "FP16 needs a GPU; use --backend gpu (CUDA EP) or trt"),
    ("onnxruntime", "cpu", "bf16", "bf16 is served by Paddle's oneDNN only; use --engine paddle --backend cpu"),
])
def test_impossible_requests(engine: str, target: str, precision: str, reason: str) -> None:
    with pytest.raises(PrecisionUnsupportedError) as info:
        routing.check_request(target, precision, engine)
    assert str(info.value) == f"{engine}/{target} cannot serve {precision}: {reason}"


def test_impossible_with_any_engine() -> None:
    with pytest.raises(PrecisionUnsupportedError, match=r"^cpu cannot serve fp16: FP16 needs a GPU"):
        routing.check_request("cpu", "fp16")
    with pytest.raises(PrecisionUnsupportedError, match="onnxruntime/any cannot serve bf16"):
        routing.check_request("any", "bf16", "onnxruntime")
    with pytest.raises(PrecisionUnsupportedError, match="gpu cannot serve int8"):
        routing.check_request("gpu", "int8")  # neither engine's native GPU path does INT8


@pytest.mark.parametrize(("engine", "target", "precision", "message"), [
    ("any", "tpu", "fp32", "unknown backend 'tpu'; choose one of any, cpu, gpu, trt"),
    ("any", "any", "fp64", "unknown precision 'fp64'; choose one of fp32, fp16, int8, bf16"),
    ("tensorflow", "any", "fp32", "unknown engine 'tensorflow'; choose one of any, paddle, onnxruntime"),
    ("any", "CPU", "fp32", "unknown backend 'CPU'"),
    ("any", "cpu", "", "unknown precision ''"),
])
def test_unknown_names(engine: str, target: str, precision: str, message: str) -> None:
    with pytest.raises(PrecisionUnsupportedError, match=message):
        routing.check_request(target, precision, engine)


def test_every_possible_request_is_accepted() -> None:
    for engine in routing.ENGINE_TARGETS:
        for target in routing.TARGETS:
            for precision in routing.PRECISIONS:
                if routing.possible(engine, target, precision):
                    assert routing.job_queue(target, precision, engine) == f"trtbatch.{engine}.{target}.{precision}"
                else:
                    with pytest.raises(PrecisionUnsupportedError):
                        routing.job_queue(target, precision, engine)
    assert routing.possible("any", "gpu", "fp16")  # the CUDA EP does FP16
    assert not routing.possible("any", "gpu", "int8") and not routing.possible("onnxruntime", "any", "bf16")


def test_queue_names_parse_back() -> None:
    assert routing.job_queue("trt", "int8", "onnxruntime") == "trtbatch.onnxruntime.trt.int8"
    assert routing.job_queue("any", "fp16") == "trtbatch.any.any.fp16"
    assert routing.calibration_queue("trt") == "trtbatch.paddle.trt.calib"
    assert routing.calibration_queue("ptq") == "trtbatch.paddle.any.calib"
    assert routing.calibration_queue("trt", "onnxruntime") == "trtbatch.onnxruntime.any.calib"
    assert routing.convert_queue("paddle") == "trtbatch.paddle.any.convert"
    assert routing.convert_queue("onnx") == "trtbatch.onnxruntime.any.convert"
    assert routing.parse_queue("trtbatch.onnxruntime.trt.int8") == ("onnxruntime", "trt", "int8")
    for bad in ("celery", "trtbatch.trt.int8", "other.any.trt.int8", "trtbatch.any.trt.int8.x"):
        with pytest.raises(ValueError, match="not a trtbatch queue"):
            routing.parse_queue(bad)


def test_worker_queues_cpu() -> None:
    queues = routing.worker_queues(CPU)
    assert queues == ["trtbatch.paddle.cpu.fp32", "trtbatch.paddle.any.fp32", "trtbatch.any.cpu.fp32",
                      "trtbatch.any.any.fp32", "trtbatch.paddle.cpu.int8", "trtbatch.paddle.any.int8",
                      "trtbatch.any.cpu.int8", "trtbatch.any.any.int8",
                      "trtbatch.paddle.any.calib"]  # PTQ runs on any Paddle worker; no TensorRT queue here
    assert "trtbatch.paddle.cpu.bf16" in routing.worker_queues(CPU_BF16)
    both = routing.worker_queues(CPU | ORT_CPU, convert_from=("paddle", "onnx"))
    assert {"trtbatch.onnxruntime.cpu.int8", "trtbatch.onnxruntime.any.calib", "trtbatch.paddle.any.convert",
            "trtbatch.onnxruntime.any.convert"} <= set(both)
    assert len(both) == len(set(both))


def test_worker_queues_gpu() -> None:
    queues = routing.worker_queues(TRT | ORT_TRT)
    assert len(queues) == len(set(queues))  # any.any.fp32 comes from four capabilities: listed once
    assert {"trtbatch.onnxruntime.gpu.fp16", "trtbatch.any.gpu.fp16", "trtbatch.onnxruntime.any.fp16",
            "trtbatch.onnxruntime.trt.int8", "trtbatch.paddle.trt.calib",
            "trtbatch.onnxruntime.any.calib"} <= set(queues)
    assert "trtbatch.onnxruntime.gpu.int8" not in queues and "trtbatch.any.gpu.int8" not in queues
    assert routing.worker_queues(list(TRT)) == routing.worker_queues(sorted(TRT, reverse=True))  # stable order
    for q in queues:
        assert routing.queue_servable(q, TRT | ORT_TRT)
    assert routing.worker_queues([]) == []
    # an ONNX Runtime-only GPU worker (no Paddle): no Paddle queue at all
    assert not any(q.split(".")[1] == "paddle" for q in routing.worker_queues(ORT_GPU))


def test_choose_prefers_tensorrt_then_the_cuda_ep_then_native_then_cpu() -> None:
    assert routing.choose("any", "any", "fp32", TRT | ORT_TRT | CPU) == ("onnxruntime", "trt")
    assert routing.choose("any", "any", "fp32", TRT | CPU) == ("paddle", "trt")
    assert routing.choose("any", "any", "fp32", ORT_GPU | {("paddle", "gpu", "fp32")}) == ("onnxruntime", "gpu")
    assert routing.choose("any", "any", "fp32", CPU | ORT_CPU) == ("paddle", "cpu")
    assert routing.choose("any", "any", "int8", CPU | ORT_CPU) == ("paddle", "cpu")
    assert routing.choose("onnxruntime", "any", "int8", CPU | ORT_CPU) == ("onnxruntime", "cpu")
    assert routing.choose("any", "cpu", "fp32", TRT | CPU) == ("paddle", "cpu")  # an explicit target wins
    assert routing.choose("paddle", "gpu", "fp32", TRT | ORT_TRT) == ("paddle", "gpu")
    assert routing.choose("any", "gpu", "fp16", ORT_GPU) == ("onnxruntime", "gpu")


def test_choose_errors() -> None:
    with pytest.raises(PrecisionUnsupportedError) as info:
        routing.choose("any", "trt", "int8", CPU)
    assert str(info.value) == ("this worker cannot serve int8 on engine any, backend trt "
                               "(it serves: paddle:cpu/fp32, paddle:cpu/int8)")
    with pytest.raises(PrecisionUnsupportedError, match="bf16 on engine any, backend any"):
        routing.choose("any", "any", "bf16", TRT | CPU)
    with pytest.raises(PrecisionUnsupportedError, match=r"it serves: nothing"):
        routing.choose("any", "any", "fp32", set())
    with pytest.raises(PrecisionUnsupportedError, match="int8 on engine onnxruntime, backend gpu"):
        routing.choose("onnxruntime", "gpu", "int8", ORT_TRT)


def test_queue_servable() -> None:
    assert routing.queue_servable("trtbatch.paddle.cpu.fp32", CPU)
    assert routing.queue_servable("trtbatch.any.any.int8", CPU)
    assert not routing.queue_servable("trtbatch.any.any.fp16", CPU)
    assert not routing.queue_servable("trtbatch.paddle.cpu.bf16", CPU)
    assert routing.queue_servable("trtbatch.paddle.cpu.bf16", CPU_BF16)
    assert not routing.queue_servable("trtbatch.any.trt.int8", CPU)
    assert routing.queue_servable("trtbatch.paddle.any.calib", CPU)
    assert not routing.queue_servable("trtbatch.paddle.trt.calib", CPU)
    assert routing.queue_servable("trtbatch.paddle.trt.calib", TRT)
    assert not routing.queue_servable("trtbatch.paddle.any.convert", CPU)
    assert routing.queue_servable("trtbatch.paddle.any.convert", CPU, convert_from=("paddle",))
