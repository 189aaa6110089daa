"""GPU numerical self-tests, one per engine: never serve silently wrong results.

paddlepaddle-gpu 2.6.2 (CUDA 11.8 build) lacks kernels for compute capability 9.0: on H100/H200
its predictors run, fast, and return garbage (measured on H200: ResNet50 logits with relative
error 1.0 against the CPU, and different garbage with IR optimisation on or off). A GPU worker
therefore runs a small conv/BN/ReLU/linear network through Paddle Inference on the CPU and on its
GPU at start, and compares. ``gpu_selftest`` (setting): ``enforce`` refuses to start a worker whose
GPU disagrees, ``warn`` starts it with the finding in its fleet record, ``off`` skips the test.

ONNX Runtime's CUDA EP is checked the same way (``ort_gpu_selftest``), on a canary built with the
``onnx`` package alone (a GPU node needs no Paddle): a failing engine loses its GPU capabilities,
the other engine keeps its own.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from common.spec import PredictorSpec
from workers import engines
from workers.engines.paddle_import import paddle

TOLERANCE = 1e-3  # relative L2; FP32 (TF32 convolutions included) lands far below
CANARY_SHAPE = (-1, 3, 32, 32)


def _canary(dest: Path) -> None:
    pd = paddle()
    pd.set_device("cpu")
    pd.seed(7)
    nn = pd.nn
    net = nn.Sequential(
        nn.Conv2D(3, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(),
        nn.Conv2D(16, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(),
        nn.MaxPool2D(2), nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
    for layer in net.sublayers():
        if isinstance(layer, nn.BatchNorm2D):
            layer._mean.set_value(pd.rand(layer._mean.shape) - 0.5)
            layer._variance.set_value(pd.rand(layer._variance.shape) + 0.5)
    net.eval()
    spec = pd.static.InputSpec([None, *CANARY_SHAPE[1:]], "float32", name="x")
    pd.jit.save(net, str(dest / "inference"), input_spec=[spec])


def reference_spec(input_shape: tuple[int, ...], gpu: bool = False, threads: int = 1) -> PredictorSpec:
    """An FP32 spec with nothing of a job's tuning: the reference that worker outputs are compared
    with (CPU) and that a GPU must agree with (GPU: native CUDA, no TensorRT)."""
    if gpu:
        return PredictorSpec(version_id="reference", backend="gpu", precision="fp32", device="gpu",
                             gpu_memory_pool_mb=64, input_shape=tuple(input_shape))
    return PredictorSpec(version_id="reference", backend="cpu", precision="fp32", device="cpu",
                         cpu_threads=threads, input_shape=tuple(input_shape))


def reference_outputs(model_dir: Path, x: np.ndarray, gpu: bool = False) -> np.ndarray:
    """The first output of an FP32 reference predictor (``reference_spec``) on ``x``."""
    spec = reference_spec((-1, *x.shape[1:]), gpu)
    with tempfile.TemporaryDirectory() as opt:
        predictor = engines.build(spec, model_dir, Path(opt))
        try:
            return next(iter(predictor.run(x).values()))
        finally:
            predictor.close()


def gpu_selftest() -> tuple[bool, str]:
    """(agrees, detail) for GPU 0 of this process against the CPU."""
    x = np.random.default_rng(3).standard_normal((4, *CANARY_SHAPE[1:])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _canary(folder)
        ref = reference_outputs(folder, x)
        try:  # engines.build rebuilds a GPU predictor whose first run fails (Hopper with this build)
            got = reference_outputs(folder, x, gpu=True)
        except Exception as exc:
            return False, f"GPU predictor failed: {str(exc).strip().splitlines()[0][:200]}"
    rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))
    detail = f"relative L2 error of a conv/BN/ReLU/linear canary, GPU vs CPU: {rel:.3g} (tolerance {TOLERANCE})"
    return bool(np.isfinite(rel) and rel <= TOLERANCE), detail


def ort_canary(dest: Path) -> Path:
    """conv/BN/ReLU x2, max-pool, flatten, linear, seeded weights, written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)

    def const(name: str, arr: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(arr.astype(np.float32), name)

    inits = [const("w1", rng.standard_normal((16, 3, 3, 3)) * 0.2), const("b1", rng.standard_normal(16) * 0.1),
             const("w2", rng.standard_normal((16, 16, 3, 3)) * 0.1), const("b2", rng.standard_normal(16) * 0.1),
             const("wl", rng.standard_normal((16 * 16 * 16, 10)) * 0.02), const("bl", rng.standard_normal(10))]
    for i in (1, 2):
        inits += [const(f"g{i}", rng.uniform(0.5, 1.5, 16)), const(f"be{i}", rng.standard_normal(16) * 0.1),
                  const(f"m{i}", rng.random(16) - 0.5), const(f"v{i}", rng.random(16) + 0.5)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "g2", "be2", "m2", "v2"], ["n2"]),
             helper.make_node("Relu", ["n2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wl", "bl"], ["y"])]
    graph = helper.make_graph(nodes, "canary",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    # IR version 8 (onnx 1.10+): a newer onnx package would stamp its own, which an older ONNX Runtime
    # refuses ("Unsupported model IR version") - the canary must load on any runtime we support
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = dest / "model.onnx"
    onnx.save(model, str(path))
    return path


def ort_gpu_selftest() -> tuple[bool | None, str]:
    """(agrees, detail) for ONNX Runtime's CUDA EP on GPU 0 of this process against its CPU EP."""
    from workers.engines.ort_engine import onnxruntime

    if importlib.util.find_spec("onnx") is None:
        return None, "not run: the onnx package is not installed (pip install onnx)"
    ort = onnxruntime(gpu=True)
    x = np.random.default_rng(3).standard_normal((4, *CANARY_SHAPE[1:])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(ort_canary(Path(tmp)))
        ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        try:
            session = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
            if "CUDAExecutionProvider" not in session.get_providers():
                return False, "the CUDA execution provider did not load (CUDA / cuDNN libraries missing?)"
            got = session.run(None, {"x": x})[0]
        except Exception as exc:
            return False, f"CUDA EP session failed: {str(exc).strip().splitlines()[0][:200]}"
    rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))
    detail = (f"relative L2 error of a conv/BN/ReLU/linear canary, ONNX Runtime CUDA EP vs CPU EP: {rel:.3g} "
              f"(tolerance {TOLERANCE})")
    return bool(np.isfinite(rel) and rel <= TOLERANCE), detail
