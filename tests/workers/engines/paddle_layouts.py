"""Real model folders in the layouts users bring, built with Paddle 2.6 itself (tiny nets, 3x32x32),
a tiny ONNX graph built with onnx.helper, and ``run_paddle`` to compare what they compute.

Each builder writes one folder and returns it. ``reference`` gives the net's outputs on a fixed
batch, so a test can check that a converted layout still computes the same function.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.manifest import MODEL_FILE, PARAMS_FILE
from workers.engines.paddle_import import inference
from workers.engines.paddle_import import paddle as load_paddle

SHAPE = (3, 32, 32)
CLASSES = 5


def probe_batch(n: int = 2, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, *shape)).astype(np.float32)


def _net(softmax: bool = False, channels: int = 3):
    paddle = load_paddle()
    nn = paddle.nn
    paddle.seed(0)
    layers = [nn.Conv2D(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2D(4, 4, 3, stride=2),
              nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(4, CLASSES)]
    net = nn.Sequential(*layers, *([nn.Softmax()] if softmax else []))
    net.eval()
    return net


def jit_saved(folder: Path, prefix: str = "inference", shape: tuple = (None, *SHAPE), softmax: bool = False,
              name: str = "x") -> Path:
    """``paddle.jit.save(layer, folder/prefix, input_spec=[InputSpec(shape)])``."""
    paddle = load_paddle()
    net = _net(softmax, channels=shape[1] or 3)
    paddle.jit.save(net, str(folder / prefix), input_spec=[paddle.static.InputSpec(list(shape), "float32", name)])
    return folder


def save_layer(folder: Path, layer, specs: list) -> Path:
    """Any layer with any input specs, as ``folder/inference.*`` (for the refusals)."""
    paddle = load_paddle()
    layer.eval()
    paddle.jit.save(layer, str(folder / "inference"), input_spec=specs)
    return folder


def _static_net(softmax: bool = False):
    """A 2-conv static-graph program, its feed and fetch variables, and an executor with its weights."""
    paddle = load_paddle()
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("img", [None, *SHAPE], "float32")
        h = paddle.static.nn.conv2d(x, 4, 3, padding=1, act="relu")
        h = paddle.static.nn.conv2d(h, 4, 3, stride=2)
        y = paddle.static.nn.fc(paddle.mean(h, axis=[2, 3]), CLASSES)
        if softmax:
            y = paddle.nn.functional.softmax(y)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    return main.clone(for_test=True), x, y, exe


def static_saved(root: Path, layout: str, softmax: bool = False) -> tuple[Path, np.ndarray]:
    """One static-graph net under ``root/layout`` in one of the layouts, and its outputs on
    ``probe_batch()``. Layouts: ``prefix`` (save_inference_model to ``net.*``), ``__model__``
    (+ ``__params__``), ``model`` (+ ``params``), ``separate`` (``__model__`` + one file per
    parameter, what ``paddle.inference.Config(model_dir)`` loads)."""
    paddle = load_paddle()
    folder = root / layout
    folder.mkdir(parents=True)
    paddle.enable_static()
    try:
        with paddle.static.scope_guard(paddle.static.Scope()):
            program, x, y, exe = _static_net(softmax)
            ref = exe.run(program, feed={"img": probe_batch()}, fetch_list=[y])[0]
            if layout == "prefix":
                paddle.static.save_inference_model(str(folder / "net"), [x], [y], exe, program=program)
                return folder, ref
            serialized = paddle.static.serialize_program([x], [y], program=program)
            if layout == "separate":
                (folder / "__model__").write_bytes(serialized)
                normal = paddle.static.normalize_program(program, [x], [y])
                params = [v for v in normal.list_vars() if v.persistable and v.name not in ("feed", "fetch")]
                paddle.static.save_vars(exe, str(folder), normal, vars=params)
                return folder, ref
            names = {"__model__": ("__model__", "__params__"), "model": ("model", "params")}[layout]
            (folder / names[0]).write_bytes(serialized)
            (folder / names[1]).write_bytes(paddle.static.serialize_persistables([x], [y], exe, program=program))
            return folder, ref
    finally:
        paddle.disable_static()


def qat_saved(folder: Path) -> Path:
    """A QAT-style export: ``paddle.quantization.QAT`` fake quanters, a few training steps, convert,
    ``jit.save`` - a program with quantize_linear / dequantize_linear ops."""
    paddle = load_paddle()
    from paddle.quantization import QAT, QuantConfig
    from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver

    quanter = FakeQuanterWithAbsMaxObserver(moving_rate=0.9)
    qat = QAT(QuantConfig(activation=quanter, weight=quanter))
    fp32 = _net()
    fp32.train()  # QAT.quantize asserts a model in training mode
    net = qat.quantize(fp32, inplace=False)
    for _ in range(3):
        net(paddle.to_tensor(probe_batch(4)))
    net.eval()
    spec = paddle.static.InputSpec([None, *SHAPE], "float32", "x")
    return save_layer(folder, qat.convert(net, inplace=False), [spec])


def link_tree(src: Path, dest: Path) -> Path:
    """A copy of a folder's files (hard links where possible)."""
    dest.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file():
            try:
                os.link(path, dest / path.name)
            except OSError:
                (dest / path.name).write_bytes(path.read_bytes())
    return dest


def refused(folder: Path, kind: str) -> Path:
    """A model trtbatch must refuse: ``two-inputs``, ``int64-input``, ``rank-2``, ``scalar-output``,
    ``no-batch-output``."""
    paddle = load_paddle()
    nn, spec = paddle.nn, paddle.static.InputSpec
    image = spec([None, *SHAPE], "float32", "x")

    class Net(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.kind = kind  # an attribute: dy2static reads no closure variables
            self.conv = nn.Conv2D(3, 4, 3)
            self.fc = nn.Linear(12, CLASSES)

        def forward(self, x, y=None):
            if self.kind == "two-inputs":
                return self.conv(x) + self.conv(y)
            if self.kind == "int64-input":
                return self.conv(paddle.cast(x, "float32"))
            if self.kind == "rank-2":
                return self.fc(x)
            if self.kind == "scalar-output":
                return paddle.mean(self.conv(x))
            return paddle.mean(self.conv(x), axis=0)  # no-batch-output: averages the batch away

    specs = {"two-inputs": [image, spec([None, *SHAPE], "float32", "y")],
             "int64-input": [spec([None, *SHAPE], "int64", "x")],
             "rank-2": [spec([None, 12], "float32", "x")]}.get(kind, [image])
    return save_layer(folder, Net(), specs)


def run_paddle(model_dir: Path, batch: np.ndarray) -> np.ndarray:
    config = inference().Config(str(model_dir / MODEL_FILE), str(model_dir / PARAMS_FILE))
    config.disable_gpu()
    predictor = inference().create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def onnx_model(path: Path, softmax: bool, opset: int = 13, axis: int | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"])]
    last = "flat"
    if softmax:
        attrs = {} if axis is None else {"axis": axis}
        nodes.append(helper.make_node("Softmax", ["flat"], ["probs"], **attrs))
        last = "probs"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path
