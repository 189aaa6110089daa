"""What a model file says about itself, read without building a predictor: its inputs and outputs
(names, declared shapes with -1 for dynamic dimensions, dtypes), its operator types, and which
outputs already end in a softmax. ``trtbatch models add`` builds the manifest's defaults from it
and validation (workers/engines/validate.py) checks the manifest against it.

Paddle Inference cannot say this itself: an input handle reports ``[0]`` until a batch is set, so
the shapes come from the program's feed and fetch variables. ``resave_combined`` turns the
one-file-per-parameter layout of older Paddle releases into our two files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.errors import ModelError
from common.manifest import MODEL_FILE, ONNX_FILE
from workers.engines.paddle_import import paddle

#: Ops that pass values through unchanged when their attributes say so: the ``scale`` op Paddle's
#: save_inference_model appends to every fetch (scale 1, bias 0), ONNX Identity.
_PADDLE_PASS_THROUGH = {"scale"}
_ONNX_PASS_THROUGH = {"Identity"}
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 16: "bfloat16"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # -1: dynamic
    dtype: str  # numpy spelling: float32, int64, ...


@dataclass(frozen=True)
class ModelInfo:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    op_types: frozenset[str]
    softmax_outputs: frozenset[str]  # outputs whose last real op is a softmax over the last axis

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def model_info(model_dir: Path, fmt: str) -> ModelInfo:
    """The interface of the model in ``model_dir`` (our file names), Paddle or ONNX."""
    try:
        return onnx_info(model_dir / ONNX_FILE) if fmt == "onnx" else paddle_info(model_dir / MODEL_FILE)
    except ModelError:
        raise
    except Exception as exc:  # a damaged or foreign file: say which, not where the parser failed
        raise ModelError(f"cannot read the model program {model_dir}: {str(exc).strip()[-200:]}") from exc


# -- Paddle ------------------------------------------------------------------------------------
def _paddle_program(model_file: Path):
    pd = paddle()
    pd.enable_static()  # Program.parse_from_string builds static-graph operators
    try:
        return pd.static.Program.parse_from_string(model_file.read_bytes())
    finally:
        pd.disable_static()


def _var(block, name: str) -> TensorInfo:
    var = block.var(name)
    return TensorInfo(name, tuple(int(d) for d in var.shape), str(var.dtype).replace("paddle.", ""))


def paddle_info(model_file: Path) -> ModelInfo:
    program = _paddle_program(model_file)
    block = program.global_block()
    feeds = sorted((op.attr("col"), op.output("Out")[0]) for op in block.ops if op.type == "feed")
    fetches = sorted((op.attr("col"), op.input("X")[0]) for op in block.ops if op.type == "fetch")
    softmaxed = {name for _, name in fetches if _paddle_softmax_last(block, name)}
    return ModelInfo(inputs=tuple(_var(block, n) for _, n in feeds), outputs=tuple(_var(block, n) for _, n in fetches),
                     op_types=frozenset(op.type for b in program.blocks for op in b.ops),
                     softmax_outputs=frozenset(softmaxed))


def _producer(ops: list, name: str, before: int) -> int:
    """The index of the last op before ``before`` that writes ``name`` (-1 if none): searched by
    position, since in-place ops write the variable they read."""
    return next((i for i in range(before - 1, -1, -1) if name in ops[i].output_arg_names), -1)


def _paddle_softmax_last(block, name: str) -> bool:
    ops = list(block.ops)
    at = _producer(ops, name, len(ops))
    while at >= 0 and ops[at].type in _PADDLE_PASS_THROUGH and _identity_scale(ops[at]):
        at = _producer(ops, ops[at].input("X")[0], at)
    if at < 0 or ops[at].type != "softmax":
        return False
    op = ops[at]
    rank = len(block.var(op.output("Out")[0]).shape)
    return op.attr("axis") in (-1, rank - 1)


def _identity_scale(op) -> bool:
    bias = op.attr("bias") if op.has_attr("bias") else 0.0
    return float(op.attr("scale")) == 1.0 and float(bias) == 0.0 and not op.input("ScaleTensor")


def resave_combined(src_dir: Path, model_filename: str, dest_dir: Path) -> None:
    """Load a program whose parameters are one file each (``__model__`` + a file per variable, the
    layout of Paddle 1.x ``save_inference_model`` without ``params_filename``) and save it again as
    ``inference.pdmodel`` + ``inference.pdiparams``: workers, conversion and artifacts know one layout."""
    pd = paddle()
    pd.enable_static()
    # Paddle warns that loading by folder is deprecated: that folder layout is what we convert from.
    quiet = logging.getLogger("paddle.static.io")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        exe = pd.static.Executor(pd.CPUPlace())
        with pd.static.scope_guard(pd.static.Scope()):
            program, feeds, fetches = pd.static.load_inference_model(
                str(src_dir), exe, model_filename=model_filename, params_filename=None)
            feed_vars = [program.global_block().var(n) for n in feeds]
            pd.static.save_inference_model(str(dest_dir / Path(MODEL_FILE).stem), feed_vars, fetches, exe,
                                           program=program)
    except Exception as exc:
        raise ModelError(f"cannot load {src_dir / model_filename} with one file per parameter "
                         f"(is a parameter file missing?): {str(exc).strip()[-200:]}") from exc
    finally:
        quiet.setLevel(level)
        pd.disable_static()


# -- ONNX --------------------------------------------------------------------------------------
def _onnx_tensor(value) -> TensorInfo:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorInfo(value.name, dims, _ONNX_DTYPES.get(tensor.elem_type, f"onnx type {tensor.elem_type}"))


def onnx_info(path: Path) -> ModelInfo:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    softmaxed = {out.name for out in graph.output if _onnx_softmax_last(graph, out, opset)}
    return ModelInfo(inputs=tuple(_onnx_tensor(v) for v in graph.input if v.name not in weights),
                     outputs=tuple(_onnx_tensor(v) for v in graph.output),
                     op_types=frozenset(node.op_type for node in graph.node), softmax_outputs=frozenset(softmaxed))


def _onnx_softmax_last(graph, out, opset: int) -> bool:
    producer = {o: node for node in graph.node for o in node.output}
    node = producer.get(out.name)
    while node is not None and node.op_type in _ONNX_PASS_THROUGH:
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return False
    default = -1 if opset >= 13 else 1  # opset 13 moved Softmax's default axis from 1 to the last
    axis = next((a.i for a in node.attribute if a.name == "axis"), default)
    return axis in (-1, len(out.type.tensor_type.shape.dim) - 1)
