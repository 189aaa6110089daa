"""The ONNX Runtime side of predictor specs: what a node serves, why not, and every OrtSettings branch
(the TensorRT EP's included: they cannot run here, so their decisions are pinned down as data)."""

from __future__ import annotations

import dataclasses

import pytest

from common.errors import PrecisionUnsupportedError
from common.manifest import InputSpec, ModelManifest, Preprocess
from common.node import CPU_EP, CUDA_EP, TRT_EP, NodeInfo
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB
from common.spec import build_spec, ort_model_variant

FP32 = ModelManifest(name="r50", max_batch_size=256, input=InputSpec(name="x", shape=(-1, 3, 224, 224)),
                     preprocess=Preprocess(), format="onnx")
QDQ = dataclasses.replace(FP32, name="r50@int8-ptq.onnx", quantized=True, base="r50")
VID = "vonnx0123456789abcdef"

ORT_CPU = NodeInfo(ort_version="1.32.0", ort_providers=(CPU_EP,), cpu_count=2)
ORT_GPU = NodeInfo(ort_version="1.31.1", ort_providers=(TRT_EP, CUDA_EP, CPU_EP), gpu_count=1,
                   gpu_name="NVIDIA H200", gpu_compute_capability="9.0")
ORT_TRT = dataclasses.replace(ORT_GPU, trt_runtime=True, trt_runtime_version="10.8.0")
BOTH = dataclasses.replace(ORT_TRT, paddle_version="2.6.2", cuda=True, gpu_selftest_ok=False,
                           gpu_selftest="relative L2 error ... 1.0")


def ort_spec(backend: str, precision: str, manifest: ModelManifest = FP32, node: NodeInfo = ORT_TRT,
             source: str | None = None, batch: int = 128):
    device = "cpu" if backend == "cpu" else "gpu"
    return build_spec(manifest, VID, node, device, backend, precision, batch, source, cpu_threads=2,
                      engine="onnxruntime")  # type: ignore[arg-type]


def test_capabilities_by_what_is_installed() -> None:
    assert ORT_CPU.capabilities("cpu") == {("onnxruntime", "cpu", "fp32"), ("onnxruntime", "cpu", "int8")}
    assert ORT_CPU.capabilities("gpu") == set()
    assert ORT_GPU.capabilities("gpu") == {("onnxruntime", "gpu", "fp32"), ("onnxruntime", "gpu", "fp16")}
    assert ORT_TRT.capabilities("gpu") == ORT_GPU.capabilities("gpu") | {
        ("onnxruntime", "trt", "fp32"), ("onnxruntime", "trt", "fp16"), ("onnxruntime", "trt", "int8")}
    # no int8 on the CUDA EP, ever
    assert not any(c[1] == "gpu" and c[2] == "int8" for c in ORT_TRT.capabilities("gpu"))
    # Paddle failed its GPU self-test (Hopper with the CUDA 11.8 wheel): ONNX Runtime still serves the GPU
    assert {c[0] for c in BOTH.capabilities("gpu")} == {"onnxruntime"}
    assert dataclasses.replace(ORT_GPU, ort_gpu_selftest_ok=False).capabilities("gpu") == set()


@pytest.mark.parametrize(("node", "backend", "precision", "reason"), [
    (NodeInfo(), "cpu", "fp32", "ONNX Runtime is not installed on this node (pip install trtbatch[gpu]"),
    (ORT_CPU, "gpu", "fp32", "has no CUDAExecutionProvider (it is the CPU wheel; install onnxruntime-gpu)"),
    (dataclasses.replace(ORT_GPU, gpu_count=0), "gpu", "fp32", "no GPU is visible to this process"),
    (dataclasses.replace(ORT_GPU, ort_providers=(CUDA_EP, CPU_EP)), "trt", "fp16",
     "was built without the TensorRT execution provider"),
    (ORT_GPU, "trt", "int8", "needs TensorRT 10 (libnvinfer.so.10) on LD_LIBRARY_PATH"),
    (ORT_TRT, "gpu", "int8", "CUDA execution provider has no INT8 convolution kernels"),
    (dataclasses.replace(ORT_GPU, ort_gpu_selftest_ok=False, ort_gpu_selftest="rel L2 0.9"), "gpu", "fp32",
     "CUDA execution provider fails on this GPU (rel L2 0.9)"),
])
def test_refusals_say_why(node: NodeInfo, backend: str, precision: str, reason: str) -> None:
    with pytest.raises(PrecisionUnsupportedError) as info:
        ort_spec(backend, precision, node=node)
    assert str(info.value).startswith(f"cannot build a onnxruntime {backend}/{precision} predictor here: ")
    assert reason in str(info.value)


def test_paddle_refuses_an_onnx_model() -> None:
    node = dataclasses.replace(ORT_CPU, paddle_version="2.6.2")
    with pytest.raises(PrecisionUnsupportedError, match="an ONNX model: only the onnxruntime engine"):
        build_spec(FP32, VID, node, "cpu", "cpu", "fp32", 8)


@pytest.mark.parametrize(("backend", "precision", "source", "variant"), [
    ("cpu", "fp32", None, "fp32"), ("gpu", "fp32", None, "fp32"), ("trt", "fp32", None, "fp32"),
    ("gpu", "fp16", None, "fp16"),  # CUDA EP: the FP16-converted model
    ("trt", "fp16", None, "fp32"),  # TensorRT builds FP16 itself from the FP32 model
    ("cpu", "int8", INT8_QUANTIZED, "qdq"), ("trt", "int8", INT8_QUANTIZED, "qdq"),
    ("trt", "int8", INT8_TRT_CALIB, "fp32"),  # FP32 model + calibration table
])
def test_model_variant(backend: str, precision: str, source: str | None, variant: str) -> None:
    assert ort_model_variant(backend, precision, source) == variant


def test_cpu_settings() -> None:
    spec = ort_spec("cpu", "fp32", node=ORT_CPU)
    assert spec.engine == "onnxruntime" and spec.trt is None
    assert spec.ort == dataclasses.replace(spec.ort, provider=CPU_EP, model_variant="fp32", intra_op_threads=2,
                                           prefer_nhwc=False, trt_fp16=False, trt_int8=False, trt=None)
    qdq = ort_spec("cpu", "int8", QDQ, node=ORT_CPU)
    assert qdq.int8_source == INT8_QUANTIZED and qdq.ort.model_variant == "qdq"  # type: ignore[union-attr]
    with pytest.raises(PrecisionUnsupportedError, match="needs a quantized version or a TensorRT calibration"):
        ort_spec("cpu", "int8", FP32, node=ORT_CPU)


def test_cuda_settings() -> None:
    fp32, fp16 = ort_spec("gpu", "fp32"), ort_spec("gpu", "fp16")
    assert fp32.ort.provider == fp16.ort.provider == CUDA_EP  # type: ignore[union-attr]
    assert fp16.ort.model_variant == "fp16" and fp16.ort.prefer_nhwc  # type: ignore[union-attr]
    assert not fp32.ort.prefer_nhwc and fp32.ort.trt is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("precision", "manifest", "source", "fp16", "int8", "table", "variant"), [
    ("fp32", FP32, None, False, False, False, "fp32"),
    ("fp16", FP32, None, True, False, False, "fp32"),
    ("int8", QDQ, INT8_QUANTIZED, True, True, False, "qdq"),  # route b: the QDQ model, no table
    ("int8", FP32, INT8_TRT_CALIB, True, True, True, "fp32"),  # route a: FP32 model + calibration table
])
def test_tensorrt_settings(precision, manifest, source, fp16, int8, table, variant) -> None:
    spec = ort_spec("trt", precision, manifest, source=source, batch=64)
    ort = spec.ort
    assert ort is not None and ort.provider == TRT_EP and ort.model_variant == variant
    assert (ort.trt_fp16, ort.trt_int8, ort.trt_calibration_table) == (fp16, int8, table)
    trt = ort.trt
    assert trt.workspace_size == 1 << 30 and trt.min_subgraph_size == 5 and trt.input_name == "x"
    assert (trt.min_shape, trt.opt_shape, trt.max_shape) == ((1, 3, 224, 224), (64, 3, 224, 224), (256, 3, 224, 224))


def test_engine_cache_name_is_keyed_like_paddle_trt() -> None:
    name = ort_spec("trt", "fp16", batch=128).engine_cache_name()
    for part in (VID, "onnxruntime", "trt", "fp16", "NVIDIA-H200", "cc90", "trt10.8.0", "bs1-128-256", "ort1.31.1"):
        assert part in name.split("_"), (part, name)
    assert name != ort_spec("trt", "fp16", batch=64).engine_cache_name()
    assert name != ort_spec("trt", "fp32", batch=128).engine_cache_name()
    newer = dataclasses.replace(ORT_TRT, trt_runtime_version="10.9.0")
    assert "trt10.9.0" in ort_spec("trt", "fp16", node=newer).engine_cache_name()
    assert ort_spec("gpu", "fp16").engine_cache_name() != name
