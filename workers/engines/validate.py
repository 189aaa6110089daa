"""Validate a model before it enters the repository (``trtbatch models add``).

Checks, each with a message that says what to fix: both program files present; the manifest is
consistent; the program has one float32 NCHW input and outputs with a batch dimension
(``check_interface``); the program's input name and C/H/W match the manifest (a dynamic H or W in
the program is fixed by the manifest); one forward pass at batch 1
and at batch 2 runs and gives finite outputs of a consistent size; a classifier's label list
matches its number of classes; a model registered as quantized really carries quantization ops
(and runs under oneDNN INT8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ModelError
from common.manifest import ModelManifest
from common.node import CPU_EP
from common.spec import OrtSettings, PredictorSpec
from workers import engines
from workers.engines.base import Predictor
from workers.engines.model_info import ModelInfo, model_info

QUANT_OPS = {"quantize_linear", "dequantize_linear", "fake_quantize_abs_max",
             "fake_quantize_moving_average_abs_max", "fake_quantize_dequantize_moving_average_abs_max",
             "fake_channel_wise_quantize_abs_max", "fake_dequantize_max_abs",
             "fake_channel_wise_dequantize_max_abs", "fake_quantize_range_abs_max",
             "fake_channel_wise_quantize_dequantize_abs_max", "fake_quantize_dequantize_abs_max"}


ONNX_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear"}


def check_interface(info: ModelInfo) -> None:
    """Refuse, before any manifest is built, what trtbatch cannot feed: it sends one float32 NCHW
    image batch and reads outputs with the batch first."""
    names = [t.name for t in info.inputs]
    if not names:
        raise ModelError("the program has no inputs; is this a training checkpoint instead of an inference model?")
    if len(names) != 1:
        raise ModelError(f"the program has {len(names)} inputs {names}; trtbatch serves models with one image "
                         "input: export the model with only the image as input")
    inp = info.inputs[0]
    if inp.dtype != "float32":
        raise ModelError(f"input {inp.name!r} is {inp.dtype}; trtbatch feeds float32 images: export the model "
                         "with a float32 input")
    if len(inp.shape) != 4:
        raise ModelError(f"input {inp.name!r} has shape {list(inp.shape)} (rank {len(inp.shape)}); trtbatch feeds "
                         "image batches [N, C, H, W]")
    if not info.outputs:
        raise ModelError("the program has no outputs")
    for out in info.outputs:
        if not out.shape:
            raise ModelError(f"output {out.name!r} is a scalar in the program (no batch dimension); trtbatch "
                             "needs every output shaped [N, ...]")


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


def _check_input(info: ModelInfo, manifest: ModelManifest) -> None:
    inp = info.inputs[0]
    if manifest.input.name != inp.name:
        raise ModelError(f"the program's input is {inp.name!r}, the manifest says {manifest.input.name!r}")
    shape = list(inp.shape)
    want = list(manifest.input.shape)
    if len(shape) != len(want):
        raise ModelError(f"input {manifest.input.name!r} has rank {len(shape)} in the program, "
                         f"the manifest says shape {want}")
    for dim, (got, exp) in enumerate(zip(shape[1:], want[1:], strict=True), start=1):
        if got not in (-1, exp):
            raise ModelError(f"input {manifest.input.name!r} dimension {dim} is {got} in the program, "
                             f"the manifest says {exp} (program shape {shape}, manifest {want})")


def _forward(pred: Predictor, manifest: ModelManifest, batch: int, fixed_batch: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal(manifest.input.batch_shape(batch)).astype(np.float32)
    try:
        return pred.run(x)
    except Exception as exc:
        hint = (f" (the program fixes the batch at {fixed_batch}: export it with a dynamic batch, "
                "InputSpec([None, C, H, W]))") if fixed_batch > 0 and fixed_batch != batch else ""
        raise ModelError(f"a forward pass at batch {batch} failed{hint}: {str(exc).strip()[-300:]}") from exc


def _check_outputs(outs: dict[str, np.ndarray], manifest: ModelManifest, batch: int) -> None:
    post = manifest.postprocess
    for name, arr in outs.items():
        if arr.shape[:1] != (batch,):
            raise ModelError(f"output {name!r} has shape {list(arr.shape)} for a batch of {batch}; trtbatch needs "
                             "the batch as the first dimension of every output")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"output {name!r} contains NaN or infinity on a test input")
    if post.output and post.output not in outs:
        raise ModelError(f"postprocess.output {post.output!r} is not an output; outputs: {sorted(outs)}")
    if post.kind == "classify":
        scores = outs[post.output] if post.output else next(iter(outs.values()))
        classes = int(np.prod(scores.shape[1:]))
        if post.labels and len(post.labels) != classes:
            raise ModelError(f"{len(post.labels)} labels for {classes} classes")


@contextlib.contextmanager
def native_output_held() -> Iterator[None]:
    """Hold what native code writes to stderr (Paddle's oneDNN INT8 passes print a line per fused op,
    whatever glog is told) while the model is built and run, and show it only if that fails - or
    always with ``-vv`` (GLOG_minloglevel=0), when the user asked for everything."""
    if os.environ.get("GLOG_minloglevel") == "0":  # noqa: SIM112 - glog's own name
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace")[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def validate(model_dir: Path, manifest: ModelManifest, info: ModelInfo | None = None) -> dict[str, Any]:
    """Check ``manifest`` against the model in ``model_dir`` and run it; ``info`` is the model's
    interface when the caller has read it already (workers/engines/model_info.py)."""
    for fname in manifest.model_files:
        if not (model_dir / fname).is_file():
            raise ModelError(f"{model_dir} has no {fname}")
    manifest.validate()
    info = info or model_info(model_dir, manifest.format)
    check_interface(info)
    _check_input(info, manifest)
    ops = info.op_types
    quant_ops = ONNX_QUANT_OPS if manifest.format == "onnx" else QUANT_OPS
    has_quant = bool(ops & quant_ops)
    if manifest.quantized and not has_quant:
        raise ModelError("registered as quantized, but the program has no quantize/dequantize ops; "
                         "is this the FP32 model?")
    with tempfile.TemporaryDirectory() as opt_dir, native_output_held():
        pred = _predictor(model_dir, manifest, Path(opt_dir))
        try:
            for batch in (1, 2):
                _check_outputs(_forward(pred, manifest, batch, info.inputs[0].shape[0]), manifest, batch)
            return {"inputs": pred.input_names, "outputs": pred.output_names,
                    "quantization_ops": sorted(ops & quant_ops)}
        finally:
            pred.close()
