"""GPU numerical self-test: never serve silently wrong results.

paddlepaddle-gpu 2.6.2 (CUDA 11.8 build) lacks kernels for compute capability 9.0: on H100/H200
its predictors run, fast, and return garbage (measured on H200: ResNet50 logits with relative
error 1.0 against the CPU, and different garbage with IR optimisation on or off). A GPU worker
therefore runs a small conv/BN/ReLU/linear network through Paddle Inference on the CPU and on its
GPU at start, and compares. ``gpu_selftest`` (setting): ``enforce`` refuses to start a worker whose
GPU disagrees, ``warn`` starts it with the finding in its fleet record, ``off`` skips the test.
"""

from __future__ import annotations

import tempfile
import zlib  # noqa: F401  # before paddle
from pathlib import Path

import numpy as np

TOLERANCE = 1e-3  # relative L2; FP32 (TF32 convolutions included) lands far below


def _canary(dest: Path) -> None:
    import paddle
    from paddle.static import InputSpec

    paddle.set_device("cpu")
    paddle.seed(7)
    net = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 16, 3, padding=1), paddle.nn.BatchNorm2D(16), paddle.nn.ReLU(),
        paddle.nn.Conv2D(16, 16, 3, padding=1), paddle.nn.BatchNorm2D(16), paddle.nn.ReLU(),
        paddle.nn.MaxPool2D(2), paddle.nn.Flatten(), paddle.nn.Linear(16 * 16 * 16, 10))
    for layer in net.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer._mean.set_value(paddle.rand(layer._mean.shape) - 0.5)
            layer._variance.set_value(paddle.rand(layer._variance.shape) + 0.5)
    net.eval()
    paddle.jit.save(net, str(dest / "inference"), input_spec=[InputSpec([None, 3, 32, 32], "float32", name="x")])


def plain_outputs(model_dir: Path, x: np.ndarray, gpu: bool = False, input_name: str = "x") -> np.ndarray:
    """The first output of a plain Paddle Inference predictor (no oneDNN, no IR tuning of ours):
    the reference that worker outputs are compared with."""
    import paddle.inference as paddle_infer

    from common.manifest import MODEL_FILE, PARAMS_FILE

    cfg = paddle_infer.Config(str(model_dir / MODEL_FILE), str(model_dir / PARAMS_FILE))
    cfg.disable_glog_info()
    if gpu:
        cfg.enable_use_gpu(64, 0)
        cfg.enable_memory_optim()
    else:
        cfg.disable_gpu()
    pred = paddle_infer.create_predictor(cfg)
    handle = pred.get_input_handle(input_name)
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    pred.run()
    return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()


def gpu_selftest() -> tuple[bool, str]:
    """(agrees, detail) for GPU 0 of this process against the CPU."""
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _canary(folder)
        ref = plain_outputs(folder, x)
        last = ""
        for _ in range(2):  # the first GPU predictor of a process may fail on Hopper with this build
            try:
                got = plain_outputs(folder, x, gpu=True)
                break
            except Exception as exc:
                last = str(exc).strip().splitlines()[0][:200]
        else:
            return False, f"GPU predictor failed: {last}"
    rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))
    detail = f"relative L2 error of a conv/BN/ReLU/linear canary, GPU vs CPU: {rel:.3g} (tolerance {TOLERANCE})"
    return bool(np.isfinite(rel) and rel <= TOLERANCE), detail
