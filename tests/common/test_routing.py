"""Capability routing: impossible requests, queue names, what a worker listens on, backend choice."""

from __future__ import annotations

import pytest

from common import routing
from common.errors import PrecisionUnsupportedError

CPU = {("cpu", "fp32"), ("cpu", "int8")}
CPU_BF16 = CPU | {("cpu", "bf16")}
TRT = {("gpu", "fp32"), ("trt", "fp32"), ("trt", "fp16"), ("trt", "int8")}


@pytest.mark.parametrize(("target", "precision", "reason"), [
    ("gpu", "fp16", "native GPU FP16 does not take effect in Paddle 2.6.2; use --backend trt"),
    ("gpu", "int8", "INT8 on GPU runs through TensorRT; use --backend trt"),
    ("gpu", "bf16", "bf16 runs on CPU (oneDNN) only; use --backend cpu"),
    ("trt", "bf16", "TensorRT 8.5 (Paddle 2.6.2) has no bf16 mode; use --backend cpu"),
    ("cpu", "fp16", "FP16 needs TensorRT on a GPU; use --backend trt"),
])
def test_impossible_pairs(target: str, precision: str, reason: str) -> None:
    with pytest.raises(PrecisionUnsupportedError) as info:
        routing.check_request(target, precision)
    assert str(info.value) == f"{target} cannot serve {precision}: {reason}"


@pytest.mark.parametrize(("target", "precision", "message"), [
    ("tpu", "fp32", "unknown backend 'tpu'; choose one of any, cpu, gpu, trt"),
    ("any", "fp64", "unknown precision 'fp64'; choose one of fp32, fp16, int8, bf16"),
    ("CPU", "fp32", "unknown backend 'CPU'"),
    ("cpu", "", "unknown precision ''"),
])
def test_unknown_names(target: str, precision: str, message: str) -> None:
    with pytest.raises(PrecisionUnsupportedError, match=message):
        routing.check_request(target, precision)


def test_every_possible_pair_is_accepted() -> None:
    for target in routing.TARGETS:
        for precision in routing.PRECISIONS:
            possible = target == "any" or precision in routing.BACKEND_PRECISIONS[target]
            if possible:
                routing.check_request(target, precision)
                assert routing.job_queue(target, precision) == f"trtbatch.{target}.{precision}"
            else:
                with pytest.raises(PrecisionUnsupportedError):
                    routing.job_queue(target, precision)


def test_queue_names_parse_back() -> None:
    assert routing.job_queue("trt", "int8") == "trtbatch.trt.int8"
    assert routing.job_queue("any", "fp16") == "trtbatch.any.fp16"
    assert routing.calibration_queue("trt") == "trtbatch.trt.calib"
    assert routing.parse_queue("trtbatch.trt.int8") == ("trt", "int8")
    for bad in ("celery", "trtbatch.trt", "other.trt.int8", "trtbatch.trt.int8.x"):
        with pytest.raises(ValueError, match="not a trtbatch queue"):
            routing.parse_queue(bad)


def test_worker_queues_cpu() -> None:
    queues = routing.worker_queues(CPU)
    assert queues == ["trtbatch.cpu.fp32", "trtbatch.any.fp32", "trtbatch.cpu.int8", "trtbatch.any.int8",
                      "trtbatch.any.calib"]  # PTQ calibration runs on any worker; no TensorRT queue here
    assert "trtbatch.cpu.bf16" in routing.worker_queues(CPU_BF16)


def test_worker_queues_trt() -> None:
    queues = routing.worker_queues(TRT)
    assert len(queues) == len(set(queues))  # any.fp32 comes from gpu and trt: listed once
    assert set(queues) == {"trtbatch.gpu.fp32", "trtbatch.trt.fp32", "trtbatch.trt.fp16", "trtbatch.trt.int8",
                           "trtbatch.any.fp32", "trtbatch.any.fp16", "trtbatch.any.int8",
                           "trtbatch.any.calib", "trtbatch.trt.calib"}
    assert routing.worker_queues(list(TRT)) == routing.worker_queues(sorted(TRT, reverse=True))  # stable order
    for q in queues:
        assert routing.queue_servable(q, TRT)
    assert routing.worker_queues([]) == []


def test_choose_backend_prefers_trt_then_gpu_then_cpu() -> None:
    assert routing.choose_backend("any", "fp32", TRT | CPU) == "trt"
    assert routing.choose_backend("any", "fp32", {("gpu", "fp32")} | CPU) == "gpu"
    assert routing.choose_backend("any", "fp32", CPU) == "cpu"
    assert routing.choose_backend("any", "int8", TRT | CPU) == "trt"
    assert routing.choose_backend("cpu", "fp32", TRT | CPU) == "cpu"  # an explicit target wins
    assert routing.choose_backend("gpu", "fp32", TRT) == "gpu"


def test_choose_backend_errors() -> None:
    with pytest.raises(PrecisionUnsupportedError) as info:
        routing.choose_backend("trt", "int8", CPU)
    assert str(info.value) == "this worker cannot serve int8 on backend trt (it serves: cpu/fp32, cpu/int8)"
    with pytest.raises(PrecisionUnsupportedError, match="bf16 on backend any"):
        routing.choose_backend("any", "bf16", TRT | CPU)
    with pytest.raises(PrecisionUnsupportedError, match=r"it serves: nothing"):
        routing.choose_backend("any", "fp32", set())


def test_queue_servable() -> None:
    assert routing.queue_servable("trtbatch.cpu.fp32", CPU)
    assert routing.queue_servable("trtbatch.any.int8", CPU)
    assert not routing.queue_servable("trtbatch.any.fp16", CPU)
    assert not routing.queue_servable("trtbatch.cpu.bf16", CPU)
    assert routing.queue_servable("trtbatch.cpu.bf16", CPU_BF16)
    assert not routing.queue_servable("trtbatch.trt.int8", CPU)
    assert routing.queue_servable("trtbatch.cpu.calib", CPU)
    assert not routing.queue_servable("trtbatch.trt.calib", CPU)
    assert routing.queue_servable("trtbatch.trt.calib", TRT)
    with pytest.raises(ValueError):
        routing.queue_servable("celery", CPU)
