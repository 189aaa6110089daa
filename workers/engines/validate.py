"""Validate a model before it enters the repository (``trtbatch models add``).

Checks, each with a message that says what to fix: both program files present; the manifest is
consistent; the program's input name and C/H/W match the manifest; one forward pass at batch 1
and at batch 2 runs and gives finite outputs of a consistent size; a classifier's label list
matches its number of classes; a model registered as quantized really carries quantization ops
(and runs under oneDNN INT8).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ModelError
from common.manifest import MODEL_FILE, ONNX_FILE, ModelManifest
from common.node import CPU_EP
from common.spec import OrtSettings, PredictorSpec
from workers import engines
from workers.engines.base import Predictor
from workers.engines.paddle_import import paddle

QUANT_OPS = {"quantize_linear", "dequantize_linear", "fake_quantize_abs_max",
             "fake_quantize_moving_average_abs_max", "fake_quantize_dequantize_moving_average_abs_max",
             "fake_channel_wise_quantize_abs_max", "fake_dequantize_max_abs",
             "fake_channel_wise_dequantize_max_abs", "fake_quantize_range_abs_max",
             "fake_channel_wise_quantize_dequantize_abs_max", "fake_quantize_dequantize_abs_max"}


ONNX_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear"}


def program_op_types(model_dir: Path, manifest: ModelManifest) -> set[str]:
    """The operator types of the model's program (Paddle) or graph (ONNX)."""
    if manifest.format == "onnx":
        import onnx

        return {node.op_type for node in onnx.load(str(model_dir / ONNX_FILE), load_external_data=False).graph.node}
    pd = paddle()
    pd.enable_static()  # Program.parse_from_string builds static-graph operators
    try:
        program = pd.static.Program.parse_from_string((model_dir / MODEL_FILE).read_bytes())
        return {op.type for block in program.blocks for op in block.ops}
    finally:
        pd.disable_static()


def _predictor(model_dir: Path, manifest: ModelManifest, opt_dir: Path) -> Predictor:
    """The model on one CPU thread - Paddle with oneDNN, or ONNX Runtime's CPU EP for an ONNX model -
    in INT8 when it is quantized: what a CPU worker builds."""
    engine = "onnxruntime" if manifest.format == "onnx" else "paddle"
    spec = PredictorSpec(version_id="validate", backend="cpu", precision="int8" if manifest.quantized else "fp32",
                         device="cpu", cpu_threads=1, input_shape=tuple(manifest.input.shape), engine=engine)
    if engine == "onnxruntime":
        spec = dataclasses.replace(spec, ort=OrtSettings(provider=CPU_EP, model_variant="fp32"))
    try:
        return engines.build(spec, model_dir, opt_dir)
    except ModelError as exc:
        raise ModelError(f"{'ONNX Runtime' if engine == 'onnxruntime' else 'Paddle'} cannot load the model: {exc}") \
            from exc


def _check_input(pred: Predictor, manifest: ModelManifest) -> None:
    names = pred.input_names
    if manifest.input.name not in names:
        raise ModelError(f"the program's inputs are {names}, the manifest says {manifest.input.name!r}")
    if len(names) != 1:
        raise ModelError(f"the program has {len(names)} inputs {names}; trtbatch serves single-input models")
    shape = pred.declared_input_shape
    want = list(manifest.input.shape)
    if len(shape) != len(want):
        raise ModelError(f"input {manifest.input.name!r} has rank {len(shape)} in the program, "
                         f"the manifest says shape {want}")
    for dim, (got, exp) in enumerate(zip(shape[1:], want[1:], strict=True), start=1):
        if got not in (-1, exp):
            raise ModelError(f"input {manifest.input.name!r} dimension {dim} is {got} in the program, "
                             f"the manifest says {exp} (program shape {shape}, manifest {want})")


def _forward(pred: Predictor, manifest: ModelManifest, batch: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal(manifest.input.batch_shape(batch)).astype(np.float32)
    try:
        return pred.run(x)
    except Exception as exc:
        raise ModelError(f"a forward pass at batch {batch} failed: {str(exc).strip()[-300:]}") from exc


def _check_outputs(outs: dict[str, np.ndarray], manifest: ModelManifest, batch: int) -> None:
    post = manifest.postprocess
    for name, arr in outs.items():
        if arr.shape[:1] != (batch,):
            raise ModelError(f"output {name!r} has shape {list(arr.shape)} for a batch of {batch}")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"output {name!r} contains NaN or infinity on a test input")
    if post.output and post.output not in outs:
        raise ModelError(f"postprocess.output {post.output!r} is not an output; outputs: {sorted(outs)}")
    if post.kind == "classify":
        scores = outs[post.output] if post.output else next(iter(outs.values()))
        classes = int(np.prod(scores.shape[1:]))
        if post.labels and len(post.labels) != classes:
            raise ModelError(f"{len(post.labels)} labels for {classes} classes")


def validate(model_dir: Path, manifest: ModelManifest) -> dict[str, Any]:
    for fname in manifest.model_files:
        if not (model_dir / fname).is_file():
            raise ModelError(f"{model_dir} has no {fname}")
    manifest.validate()
    ops = program_op_types(model_dir, manifest)
    quant_ops = ONNX_QUANT_OPS if manifest.format == "onnx" else QUANT_OPS
    has_quant = bool(ops & quant_ops)
    if manifest.quantized and not has_quant:
        raise ModelError("registered as quantized, but the program has no quantize/dequantize ops; "
                         "is this the FP32 model?")
    with tempfile.TemporaryDirectory() as opt_dir:
        pred = _predictor(model_dir, manifest, Path(opt_dir))
        try:
            _check_input(pred, manifest)
            for batch in (1, 2):
                _check_outputs(_forward(pred, manifest, batch), manifest, batch)
            return {"inputs": pred.input_names, "outputs": pred.output_names,
                    "quantization_ops": sorted(ops & quant_ops)}
        finally:
            pred.close()
