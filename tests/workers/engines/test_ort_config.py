"""Spec -> ONNX Runtime session arguments (pure), and real CPU sessions built from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from common.errors import ModelError, PrecisionUnsupportedError
from common.node import CPU_EP, CUDA_EP, TRT_EP
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB
from tests.common.test_spec_ort import FP32, ORT_CPU, QDQ, ort_spec
from workers.engines.ort_config import session_args


def test_tensorrt_options_follow_the_guide(tmp_path: Path) -> None:
    spec = ort_spec("trt", "fp16", batch=64)
    args = session_args(spec, tmp_path)
    assert [name for name, _ in args.providers] == [TRT_EP, CUDA_EP, CPU_EP]
    trt = args.providers[0][1]
    assert trt == {
        "device_id": "0", "trt_max_workspace_size": str(1 << 30), "trt_min_subgraph_size": "5",
        "trt_fp16_enable": "1", "trt_int8_enable": "0",
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(tmp_path),
        "trt_profile_min_shapes": "x:1x3x224x224", "trt_profile_opt_shapes": "x:64x3x224x224",
        "trt_profile_max_shapes": "x:256x3x224x224"}
    assert args.options["graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_tensorrt_int8_routes(tmp_path: Path) -> None:
    qdq = session_args(ort_spec("trt", "int8", QDQ, source=INT8_QUANTIZED), tmp_path).providers[0][1]
    assert qdq["trt_int8_enable"] == "1" and "trt_int8_calibration_table_name" not in qdq  # Q/DQ: no table
    table = session_args(ort_spec("trt", "int8", FP32, source=INT8_TRT_CALIB), tmp_path).providers[0][1]
    assert table["trt_int8_enable"] == table["trt_fp16_enable"] == "1"
    assert table["trt_int8_calibration_table_name"] == "calibration.flatbuffers"
    assert table["trt_int8_use_native_calibration_table"] == "0"  # ONNX Runtime's own table format


def test_cuda_and_cpu_options(tmp_path: Path) -> None:
    cuda = session_args(ort_spec("gpu", "fp16"), tmp_path)
    assert cuda.providers == [
        (CUDA_EP, {"device_id": "0", "prefer_nhwc": "1", "arena_extend_strategy": "kSameAsRequested"}), (CPU_EP, {})]
    assert cuda.options["intra_op_num_threads"] == 1
    cpu = session_args(ort_spec("cpu", "fp32", node=ORT_CPU), tmp_path, optimized_model=tmp_path / "o.onnx")
    assert cpu.providers == [(CPU_EP, {})]
    assert cpu.options["intra_op_num_threads"] == 2
    assert cpu.options["optimized_model_filepath"] == str(tmp_path / "o.onnx")


def test_paddle_specs_are_refused(tmp_path: Path) -> None:
    from common.spec import PredictorSpec

    with pytest.raises(ValueError, match="not an onnxruntime spec"):
        session_args(PredictorSpec(version_id="v", backend="cpu", precision="fp32", device="cpu"), tmp_path)


# -- real sessions on this CPU ---------------------------------------------------------------------
@pytest.fixture()
def canary(tmp_path: Path) -> Path:
    pytest.importorskip("onnx")
    from workers.engines.selftest import ort_canary

    ort_canary(tmp_path)
    return tmp_path


def test_a_cpu_session_runs_and_matches_a_plain_session(canary: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from workers import engines

    spec = dataclasses.replace(ort_spec("cpu", "fp32", node=ORT_CPU), input_shape=(-1, 3, 32, 32))
    predictor = engines.build(spec, canary, tmp_path / "opt")
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    got = predictor.run(x)
    assert predictor.input_names == ["x"] and predictor.output_names == ["y"] and predictor.runs == 1
    assert predictor.declared_input_shape == [-1, 3, 32, 32]
    ref = ort.InferenceSession(str(canary / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got["y"], ref, atol=1e-5)


def test_an_fp32_model_is_never_served_as_int8_on_the_cpu(canary: Path, tmp_path: Path) -> None:
    """A model without Q/DQ pairs (or whose pairs ONNX Runtime did not fuse) would run in FP32 under an
    INT8 label: the CPU EP's optimized graph must hold integer kernels."""
    from workers import engines

    manifest = dataclasses.replace(QDQ, input=dataclasses.replace(QDQ.input, shape=(-1, 3, 32, 32)))
    spec = ort_spec("cpu", "int8", manifest, node=ORT_CPU)
    with pytest.raises(PrecisionUnsupportedError, match="no integer kernels"):
        engines.build(spec, canary, tmp_path / "opt")


def test_a_broken_model_file_is_a_model_error(tmp_path: Path) -> None:
    from workers import engines

    (tmp_path / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match="cannot build the onnxruntime cpu/fp32 predictor"):
        engines.build(ort_spec("cpu", "fp32", node=ORT_CPU), tmp_path, tmp_path / "opt")
