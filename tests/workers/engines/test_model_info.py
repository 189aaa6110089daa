"""What a model file says about its interface, read from real Paddle programs and ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ModelError
from common.manifest import MODEL_FILE, ONNX_FILE, PARAMS_FILE
from tests.workers.engines.paddle_layouts import jit_saved, onnx_model, probe_batch, run_paddle, static_saved
from workers.engines.model_info import TensorInfo, model_info, paddle_info, resave_combined


def test_jit_saved_program(tmp_path: Path) -> None:
    info = model_info(jit_saved(tmp_path, name="image"), "paddle")
    assert info.inputs == (TensorInfo("image", (-1, 3, 32, 32), "float32"),)
    assert len(info.outputs) == 1 and info.outputs[0].shape == (-1, 5)
    assert {"conv2d", "feed", "fetch"} <= info.op_types
    assert info.softmax_outputs == frozenset()


def test_dynamic_size_and_softmax_last(tmp_path: Path) -> None:
    info = paddle_info(jit_saved(tmp_path, shape=(None, 3, None, None), softmax=True) / MODEL_FILE)
    assert info.inputs[0].shape == (-1, 3, -1, -1)
    assert info.softmax_outputs == {info.outputs[0].name}  # through the scale op save_inference_model appends


def test_resave_combined_keeps_the_function_and_the_softmax(tmp_path: Path) -> None:
    folder, ref = static_saved(tmp_path, "separate", softmax=True)
    out = tmp_path / "combined"
    out.mkdir()
    resave_combined(folder, "__model__", out)
    assert sorted(p.name for p in out.iterdir()) == [PARAMS_FILE, MODEL_FILE]
    np.testing.assert_allclose(run_paddle(out, probe_batch()), ref, rtol=1e-5, atol=1e-6)
    info = model_info(out, "paddle")
    assert info.inputs[0].name == "img"
    assert info.softmax_outputs == {info.outputs[0].name}  # now behind two identity scale ops


def test_resave_combined_says_what_is_missing(tmp_path: Path) -> None:
    folder, _ = static_saved(tmp_path, "separate")
    next(p for p in sorted(folder.iterdir()) if p.name != "__model__").unlink()
    with pytest.raises(ModelError, match="with one file per parameter \\(is a parameter file missing\\?\\)"):
        resave_combined(folder, "__model__", tmp_path)


def test_not_a_program(tmp_path: Path) -> None:
    (tmp_path / MODEL_FILE).write_bytes(b"\x00not a program" * 10)
    with pytest.raises(ModelError, match="cannot read the model program"):
        model_info(tmp_path, "paddle")


@pytest.mark.parametrize(("softmax", "opset", "axis", "expected"), [
    (False, 13, None, set()), (True, 13, None, {"y"}), (True, 11, None, {"y"}), (True, 13, 0, set()),
])
def test_onnx_interface(tmp_path: Path, softmax: bool, opset: int, axis: int | None, expected: set[str]) -> None:
    onnx_model(tmp_path / ONNX_FILE, softmax, opset, axis)
    info = model_info(tmp_path, "onnx")
    assert info.inputs == (TensorInfo("x", (-1, 3, 8, 8), "float32"),)
    assert info.output_names == ["y"] and info.outputs[0].shape == (-1, 3)
    assert info.softmax_outputs == expected
