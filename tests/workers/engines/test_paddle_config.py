"""Spec -> paddle.inference.Config: a real Config of the CPU build, and the exact TensorRT call sequence."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from common.errors import ModelError, PrecisionUnsupportedError
from common.manifest import InputSpec, ModelManifest, Preprocess
from common.routing import INT8_TRT_CALIB
from common.spec import NodeInfo, PredictorSpec, build_spec
from workers.engines import paddle_config
from workers.engines.paddle_engine import PaddlePredictor as Predictor
from workers.engines.paddle_import import inference

paddle_infer = inference()

FP32 = ModelManifest(name="digits", max_batch_size=64, input=InputSpec(name="x", shape=(-1, 1, 32, 32)),
                     preprocess=Preprocess(color="L", resize=(32, 32), crop=(), mean=(0.5,), std=(0.5,)))
QUANT = dataclasses.replace(FP32, name="digits@int8-ptq", quantized=True, base="digits")
CPU = NodeInfo(paddle_version="2.6.2", cpu_bf16=True, cpu_count=4)
TRT = NodeInfo(cuda=True, trt_compile_version=(8, 5, 3), trt_runtime=True, gpu_name="NVIDIA H100",
               gpu_compute_capability="9.0", paddle_version="2.6.2", gpu_count=1)


def cpu_spec(precision: str, threads: int = 3) -> PredictorSpec:
    manifest = QUANT if precision == "int8" else FP32
    return build_spec(manifest, "v1", CPU, "cpu", "cpu", precision, 8, cpu_threads=threads)


def trt_spec(precision: str, manifest: ModelManifest = QUANT, source: str | None = None) -> PredictorSpec:
    return build_spec(manifest, "v1", TRT, "gpu", "trt", precision, 16, int8_source=source, gpu_id=0,
                      gpu_memory_pool_mb=512)


# -- a real Config of the CPU build ---------------------------------------------------------------
@pytest.mark.parametrize(("precision", "int8"), [("fp32", False), ("int8", True), ("bf16", False)])
def test_cpu_specs_on_a_real_config(precision: str, int8: bool, tmp_path: Path) -> None:
    config = paddle_config.new_config(tmp_path / "model")
    out = paddle_config.apply(cpu_spec(precision, threads=3), config, tmp_path / "opt")
    assert out is config
    assert config.mkldnn_enabled() is True
    assert config.mkldnn_int8_enabled() is int8
    assert config.cpu_math_library_num_threads() == 3
    assert config.use_gpu() is False
    assert config.ir_optim() is True
    assert re.search(r"\| memory_optim +\| true", config.summary())  # intermediate buffers reused (memory)
    assert config.tensorrt_engine_enabled() is False
    assert (tmp_path / "opt").is_dir()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trt_specs_on_the_cpu_build_raise(precision: str, tmp_path: Path) -> None:
    config = paddle_config.new_config(tmp_path / "model")
    with pytest.raises(RuntimeError, match=r"(?i)please compile with TENSORRT"):
        paddle_config.apply(trt_spec(precision), config, tmp_path / "opt")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_predictor_turns_missing_tensorrt_into_precision_unsupported(precision: str, tmp_path: Path) -> None:
    with pytest.raises(PrecisionUnsupportedError) as info:
        Predictor(trt_spec(precision), tmp_path / "model", tmp_path / "opt")
    text = str(info.value)
    assert f"cannot build the trt/{precision} predictor: TensorRT is not usable on this node" in text
    assert "TENSORRT" in text and "\n" not in text


def test_predictor_reports_a_missing_model_as_a_model_error(tmp_path: Path) -> None:
    # (A garbage .pdmodel cannot be tested here: Paddle 2.6.2 segfaults parsing it.)
    with pytest.raises(ModelError) as info:
        Predictor(cpu_spec("fp32"), tmp_path / "model", tmp_path / "opt")
    text = str(info.value)
    assert text.startswith("cannot build the cpu/fp32 predictor for v1: ")
    assert "Cannot open file" in text and "inference.pdmodel" in text and "\n" not in text


# -- the exact calls, with a recording stand-in -------------------------------------------------
class RecordingConfig:
    """Records every method call made on it (unit level only: the real Config has no TensorRT here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def call(self, name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        (found,) = [(a, k) for n, a, k in self.calls if n == name]
        return found


@pytest.mark.parametrize(("precision", "manifest", "source", "mode", "calib"), [
    ("fp32", FP32, None, paddle_infer.PrecisionType.Float32, False),
    ("fp16", FP32, None, paddle_infer.PrecisionType.Half, False),
    ("int8", QUANT, None, paddle_infer.PrecisionType.Int8, False),
    ("int8", FP32, INT8_TRT_CALIB, paddle_infer.PrecisionType.Int8, True),
])
def test_trt_call_sequence(precision: str, manifest: ModelManifest, source: str | None, mode: Any, calib: bool,
                           tmp_path: Path) -> None:
    config = RecordingConfig()
    paddle_config.apply(trt_spec(precision, manifest, source), config, tmp_path / "opt")
    assert config.names() == ["switch_ir_optim", "disable_glog_info", "enable_use_gpu", "enable_memory_optim",
                              "enable_tensorrt_engine", "set_trt_dynamic_shape_info", "set_optim_cache_dir"]
    assert config.call("switch_ir_optim") == ((True,), {})
    assert config.call("enable_use_gpu") == ((512, 0), {})
    assert config.call("enable_tensorrt_engine") == ((), {
        "workspace_size": 1 << 30, "max_batch_size": 64, "min_subgraph_size": 5, "precision_mode": mode,
        "use_static": True, "use_calib_mode": calib})
    # Paddle's signature is (min_input_shape, max_input_shape, optim_input_shape)
    assert config.call("set_trt_dynamic_shape_info") == (
        ({"x": [1, 1, 32, 32]}, {"x": [64, 1, 32, 32]}, {"x": [16, 1, 32, 32]}), {})
    assert config.call("set_optim_cache_dir") == ((str(tmp_path / "opt"),), {})
    assert (tmp_path / "opt").is_dir()


def test_native_gpu_call_sequence(tmp_path: Path) -> None:
    config = RecordingConfig()
    spec = build_spec(FP32, "v1", TRT, "gpu", "gpu", "fp32", 8, gpu_id=1, gpu_memory_pool_mb=256)
    paddle_config.apply(spec, config, tmp_path / "opt")
    assert config.names() == ["switch_ir_optim", "disable_glog_info", "enable_use_gpu", "enable_memory_optim",
                              "set_optim_cache_dir"]
    assert config.call("enable_use_gpu") == ((256, 1), {})


@pytest.mark.parametrize(("precision", "extra"), [("fp32", []), ("int8", ["enable_mkldnn_int8"]),
                                                  ("bf16", ["enable_mkldnn_bfloat16"])])
def test_cpu_call_sequence(precision: str, extra: list[str], tmp_path: Path) -> None:
    config = RecordingConfig()
    paddle_config.apply(cpu_spec(precision, threads=5), config, tmp_path / "opt")
    assert config.names() == ["switch_ir_optim", "disable_glog_info", "disable_gpu",
                              "set_cpu_math_library_num_threads", "enable_mkldnn", *extra, "enable_memory_optim",
                              "set_optim_cache_dir"]
    assert config.call("set_cpu_math_library_num_threads") == ((5,), {})


def test_calib_tables_written(tmp_path: Path) -> None:
    assert paddle_config.calib_tables_written(tmp_path) == {}
    cache = tmp_path / "_opt_cache"
    cache.mkdir()
    (cache / "trt_calib_123abc").write_text("TRT-8503-EntropyCalibration2\nx: 3c010a14\n")
    (cache / "trt_calib_000").write_text("TRT-8503-EntropyCalibration2\n")
    (cache / "trt_calib_empty").write_bytes(b"")  # being written, or failed: not a table
    (cache / "trt_serialized_123abc").write_bytes(b"engine")
    (cache / "other").write_text("x")
    assert paddle_config.calib_tables_written(tmp_path) == {"trt_calib_000": cache / "trt_calib_000",
                                                            "trt_calib_123abc": cache / "trt_calib_123abc"}
    assert list(paddle_config.calib_tables_written(tmp_path)) == ["trt_calib_000", "trt_calib_123abc"]
