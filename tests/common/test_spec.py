"""Predictor specs: every decision build_spec makes, and the keys that name predictors, caches and tables."""

from __future__ import annotations

import dataclasses
import re

import pytest

from common.errors import PrecisionUnsupportedError
from common.manifest import InputSpec, ModelManifest, Preprocess
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB
from common.spec import NodeInfo, PredictorSpec, build_spec, trt_shape_range

FP32 = ModelManifest(name="digits", max_batch_size=64, input=InputSpec(name="x", shape=(-1, 1, 32, 32)),
                     preprocess=Preprocess(color="L", resize=(32, 32), crop=(), mean=(0.5,), std=(0.5,)))
QUANT = dataclasses.replace(FP32, name="digits@int8-ptq", quantized=True, base="digits")
VID = "v0123456789abcdef0123"

CPU = NodeInfo(paddle_version="2.6.2", cpu_count=8)
CPU_BF16 = dataclasses.replace(CPU, cpu_bf16=True)
TRT = NodeInfo(cuda=True, trt_compile_version=(8, 5, 3), trt_runtime=True, gpu_name="NVIDIA H100 80GB HBM3",
               gpu_compute_capability="9.0", paddle_version="2.6.2", gpu_count=1)
CUDA_ONLY = dataclasses.replace(TRT, trt_compile_version=(0, 0, 0), trt_runtime=False)
NO_LIBNVINFER = dataclasses.replace(TRT, trt_runtime=False)
NO_GPU_VISIBLE = dataclasses.replace(TRT, gpu_count=0)


def cpu_spec(precision: str = "fp32", manifest: ModelManifest = FP32, node: NodeInfo = CPU_BF16, **kw: object
             ) -> PredictorSpec:
    return build_spec(manifest, VID, node, "cpu", "cpu", precision, 16, **kw)  # type: ignore[arg-type]


def trt_spec(precision: str = "fp32", manifest: ModelManifest = QUANT, batch: int = 16, node: NodeInfo = TRT,
             **kw: object) -> PredictorSpec:
    return build_spec(manifest, VID, node, "gpu", "trt", precision, batch, **kw)  # type: ignore[arg-type]


# -- NodeInfo -------------------------------------------------------------------------------------
def test_capabilities() -> None:
    assert CPU.capabilities("cpu") == {("paddle", "cpu", "fp32"), ("paddle", "cpu", "int8")}
    assert CPU_BF16.capabilities("cpu") == {("paddle", "cpu", "fp32"), ("paddle", "cpu", "int8"),
                                           ("paddle", "cpu", "bf16")}
    assert CPU.capabilities("gpu") == set()
    assert TRT.capabilities("gpu") == {("paddle", "gpu", "fp32"), ("paddle", "trt", "fp32"), ("paddle", "trt", "fp16"),
                                       ("paddle", "trt", "int8")}
    assert CUDA_ONLY.capabilities("gpu") == NO_LIBNVINFER.capabilities("gpu") == {("paddle", "gpu", "fp32")}
    assert NO_GPU_VISIBLE.capabilities("gpu") == set()
    assert TRT.has_trt and TRT.trt_version == "8.5.3"
    assert not NO_LIBNVINFER.has_trt and NO_LIBNVINFER.trt_version == ""


# -- CPU ------------------------------------------------------------------------------------------
def test_cpu_fp32() -> None:
    spec = cpu_spec("fp32", cpu_threads=4)
    assert (spec.backend, spec.device, spec.precision, spec.cpu_threads) == ("cpu", "cpu", "fp32", 4)
    assert spec.trt is None and spec.int8_source is None and spec.version_id == VID
    assert spec.node == {"paddle": "2.6.2"}
    assert cpu_spec("fp32", cpu_threads=0).cpu_threads == 1  # 0 means "unset", never zero threads


def test_cpu_int8_needs_a_quantized_model() -> None:
    assert cpu_spec("int8", QUANT).int8_source == INT8_QUANTIZED
    with pytest.raises(PrecisionUnsupportedError) as info:
        cpu_spec("int8", FP32)
    assert "trtbatch calibrate --model digits --images DIR --method ptq" in str(info.value)


def test_cpu_bf16_only_where_the_cpu_has_it() -> None:
    assert cpu_spec("bf16", node=CPU_BF16).precision == "bf16"
    with pytest.raises(PrecisionUnsupportedError, match="neither AVX512-BF16 nor AMX-BF16"):
        cpu_spec("bf16", node=CPU)


def test_tensorrt_calibration_table_does_not_serve_cpu() -> None:
    with pytest.raises(PrecisionUnsupportedError, match="a TensorRT calibration table only serves the trt backend"):
        cpu_spec("int8", FP32, int8_source=INT8_TRT_CALIB)
    assert cpu_spec("int8", QUANT, int8_source=INT8_TRT_CALIB).int8_source == INT8_QUANTIZED


def test_cpu_backend_refuses_gpu_precisions() -> None:
    with pytest.raises(PrecisionUnsupportedError, match="cpu does not serve fp16"):
        cpu_spec("fp16")


# -- TensorRT -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("precision", "mode"), [("fp32", "Float32"), ("fp16", "Half"), ("int8", "Int8")])
def test_trt_precision_modes_and_fixed_settings(precision: str, mode: str) -> None:
    spec = trt_spec(precision)
    assert spec.trt is not None
    assert spec.trt.precision_mode == mode
    assert spec.trt.workspace_size == 1 << 30
    assert spec.trt.min_subgraph_size == 5
    assert spec.trt.use_static is True
    assert (spec.backend, spec.device, spec.gpu_id, spec.gpu_memory_pool_mb) == ("trt", "gpu", 0, 1024)
    assert spec.node == {"paddle": "2.6.2", "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_cc": "9.0", "trt": "8.5.3"}


def test_trt_int8_from_a_quantized_model() -> None:
    spec = trt_spec("int8", QUANT)
    assert spec.int8_source == INT8_QUANTIZED
    assert spec.trt is not None and spec.trt.use_calib_mode is False
    # a quantized model is served from its own scales even if a table was asked for
    assert trt_spec("int8", QUANT, int8_source=INT8_TRT_CALIB).trt.use_calib_mode is False  # type: ignore[union-attr]


def test_trt_int8_from_a_calibration_table() -> None:
    spec = trt_spec("int8", FP32, int8_source=INT8_TRT_CALIB)
    assert spec.int8_source == INT8_TRT_CALIB
    assert spec.trt is not None and spec.trt.use_calib_mode is True


def test_trt_int8_without_a_source() -> None:
    with pytest.raises(PrecisionUnsupportedError, match="trtbatch calibrate --model digits"):
        trt_spec("int8", FP32)


def test_trt_fp_precisions_have_no_int8_source() -> None:
    for precision in ("fp32", "fp16"):
        spec = trt_spec(precision, FP32, int8_source=INT8_TRT_CALIB)
        assert spec.int8_source is None and spec.trt.use_calib_mode is False  # type: ignore[union-attr]


def test_trt_shape_ranges() -> None:
    spec = trt_spec("fp16", FP32, batch=16)
    trt = spec.trt
    assert trt is not None
    assert trt.input_name == "x" and trt.max_batch_size == 64
    assert trt.min_shape == (1, 1, 32, 32)
    assert trt.opt_shape == (16, 1, 32, 32)
    assert trt.max_shape == (64, 1, 32, 32)
    assert trt_shape_range(FP32, 64) == ((1, 1, 32, 32), (64, 1, 32, 32), (64, 1, 32, 32))


@pytest.mark.parametrize("batch", [0, -1, 65])
def test_batch_size_out_of_range(batch: int) -> None:
    with pytest.raises(PrecisionUnsupportedError, match=rf"batch size {batch} is outside 1\.\.64"):
        trt_spec("fp32", FP32, batch=batch)


def test_native_gpu_fp32() -> None:
    spec = build_spec(FP32, VID, TRT, "gpu", "gpu", "fp32", 8, gpu_id=1, gpu_memory_pool_mb=2048)
    assert spec.trt is None and spec.device == "gpu" and spec.gpu_id == 1 and spec.gpu_memory_pool_mb == 2048


@pytest.mark.parametrize(("node", "backend", "reason"), [
    (CPU, "gpu", "this node's Paddle 2.6.2 is built without CUDA (paddle.is_compiled_with_cuda() is False); "
                 "gpu needs paddlepaddle-gpu"),
    (CPU, "trt", "built without CUDA (paddle.is_compiled_with_cuda() is False); trt needs paddlepaddle-gpu"),
    (CUDA_ONLY, "trt", "this node's Paddle is not compiled with TensorRT "
                       "(paddle.inference.get_trt_compile_version() is (0, 0, 0))"),
    (NO_LIBNVINFER, "trt", "TensorRT dynamic library (libnvinfer) is not found on this node; install TensorRT "
                           "8.5.3 and add it to LD_LIBRARY_PATH"),
    (NO_GPU_VISIBLE, "trt", "no GPU is visible to this process (check CUDA_VISIBLE_DEVICES and the driver)"),
    (NO_GPU_VISIBLE, "gpu", "no GPU is visible to this process"),
    (TRT, "gpu", "gpu does not serve fp16"),
])
def test_gpu_refusals_say_why(node: NodeInfo, backend: str, reason: str) -> None:
    precision = "fp16" if node is TRT else "fp32"
    with pytest.raises(PrecisionUnsupportedError) as info:
        build_spec(FP32, VID, node, "gpu", backend, precision, 8)
    assert str(info.value).startswith(f"cannot build a paddle {backend}/{precision} predictor here: ")
    assert reason in str(info.value)


# -- keys -----------------------------------------------------------------------------------------
def test_key_is_stable_and_sensitive() -> None:
    base = trt_spec("int8", QUANT)
    assert base.key() == trt_spec("int8", QUANT).key()
    assert re.fullmatch(r"[0-9a-f]{16}", base.key())
    variants = [
        trt_spec("fp16", QUANT), trt_spec("int8", QUANT, batch=32), trt_spec("int8", QUANT, gpu_id=1),
        trt_spec("int8", QUANT, node=dataclasses.replace(TRT, gpu_name="NVIDIA A100")),
        build_spec(QUANT, "v-other", TRT, "gpu", "trt", "int8", 16),
        dataclasses.replace(base, trt=dataclasses.replace(base.trt, use_static=False)),  # type: ignore[arg-type]
    ]
    keys = {v.key() for v in variants}
    assert base.key() not in keys and len(keys) == len(variants)
    assert cpu_spec(cpu_threads=2).key() != cpu_spec(cpu_threads=4).key()


def test_calib_key_only_for_tensorrt() -> None:
    with pytest.raises(ValueError, match="TensorRT specs only"):
        cpu_spec().calib_key()


def test_calib_key_is_portable_across_gpus() -> None:
    serving = trt_spec("int8", FP32, int8_source=INT8_TRT_CALIB)
    other_card = trt_spec("int8", FP32, int8_source=INT8_TRT_CALIB,
                          node=dataclasses.replace(TRT, gpu_name="NVIDIA A10", gpu_compute_capability="8.6"))
    assert serving.calib_key() == other_card.calib_key()
    assert serving.key() != other_card.key()


def test_calib_key_changes_with_what_shapes_the_engine() -> None:
    serving = trt_spec("int8", FP32, int8_source=INT8_TRT_CALIB)
    assert serving.calib_key() != build_spec(FP32, "v-other", TRT, "gpu", "trt", "int8", 16,
                                             int8_source=INT8_TRT_CALIB).calib_key()
    assert serving.calib_key() != trt_spec("int8", FP32, batch=32, int8_source=INT8_TRT_CALIB).calib_key()


@pytest.mark.parametrize("changes", [{"use_calib_mode": False}, {"use_static": False},
                                     {"use_calib_mode": True, "use_static": False}])
def test_calib_key_ignores_how_the_predictor_uses_the_table(changes: dict[str, bool]) -> None:
    """The table written by a calibration predictor (use_calib_mode=True, maybe use_static=False) must be
    found again by the serving spec with the same shapes: those flags are not part of the table's identity."""
    serving = trt_spec("int8", FP32, int8_source=INT8_TRT_CALIB)
    assert serving.trt is not None
    calibrating = dataclasses.replace(serving, trt=dataclasses.replace(serving.trt, **changes))
    assert calibrating.calib_key() == serving.calib_key()


def test_engine_cache_name() -> None:
    name = trt_spec("int8", QUANT, batch=16).engine_cache_name()
    for part in (VID, "paddle", "trt", "int8", "NVIDIA-H100-80GB-HBM3", "cc90", "trt8.5.3", "paddle2.6.2", "bs1-16-64"):
        assert part in name.split("_"), (part, name)
    assert "/" not in name and " " not in name
    assert name != trt_spec("int8", QUANT, batch=32).engine_cache_name()
    assert name != trt_spec("fp16", QUANT, batch=16).engine_cache_name()
    other_gpu = dataclasses.replace(TRT, gpu_name="NVIDIA A10", gpu_compute_capability="8.6")
    assert "cc86" in trt_spec("int8", QUANT, node=other_gpu).engine_cache_name()
    newer = dataclasses.replace(TRT, trt_compile_version=(8, 6, 1), paddle_version="2.6.3")
    newer_name = trt_spec("int8", QUANT, node=newer).engine_cache_name()
    assert "trt8.6.1" in newer_name and "paddle2.6.3" in newer_name
    cpu_name = cpu_spec().engine_cache_name()
    assert cpu_name.startswith(f"{VID}_paddle_cpu_fp32_paddle2.6.2_") and "cc" not in cpu_name
