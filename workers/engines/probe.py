"""Detect what this node can serve: the engines installed (Paddle, ONNX Runtime and its execution
providers), CUDA, TensorRT (compiled in and loadable), GPUs, bf16 CPUs, conversion tools.

A worker's main process runs ``python -m workers.engines.probe`` in a short-lived subprocess, so no
engine (and no CUDA) is ever initialised in a process that later forks. A node may have either
engine or both: a GPU node needs only onnxruntime-gpu.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from typing import Any

from common.node import CUDA_EP, NodeInfo
from workers.engines.gpus import gpu_details

_NVINFER_NAMES = ("libnvinfer.so.10", "libnvinfer.so", "libnvinfer.so.8")


def cpu_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def nvinfer_version() -> str:
    """The version of a loadable libnvinfer ("10.8.0"), or "" when none loads."""
    for name in _NVINFER_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            v = int(lib.getInferLibVersion())
        except (AttributeError, ValueError):
            return "unknown"
        if v >= 10000:  # TensorRT 10: MAJOR * 10000 + MINOR * 100 + PATCH
            return f"{v // 10000}.{(v // 100) % 100}.{v % 100}"
        return f"{v // 1000}.{(v // 100) % 10}.{v % 100}"  # TensorRT 8: MAJOR * 1000 + MINOR * 100 + PATCH
    return ""


def nvinfer_loadable() -> bool:
    return bool(nvinfer_version())


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _paddle(gpu: bool, selftest: bool) -> dict[str, Any]:
    if not _installed("paddle"):
        return {}
    from workers.engines.paddle_import import paddle as load_paddle

    paddle = load_paddle()
    out: dict[str, Any] = {"paddle_version": paddle.__version__, "cuda": bool(paddle.is_compiled_with_cuda()),
                           "trt_compile_version": tuple(int(x) for x in paddle.inference.get_trt_compile_version())}
    if gpu and out["cuda"] and paddle.device.cuda.device_count() > 0:
        major, minor = paddle.device.cuda.get_device_capability(0)
        out.update(gpu_count=paddle.device.cuda.device_count(), gpu_name=paddle.device.cuda.get_device_name(0),
                   gpu_compute_capability=f"{major}.{minor}")
        if selftest:
            from workers.engines.selftest import gpu_selftest

            out["gpu_selftest_ok"], out["gpu_selftest"] = gpu_selftest()
    return out


def _onnxruntime(gpu: bool, selftest: bool) -> dict[str, Any]:
    if not _installed("onnxruntime"):
        return {}
    from workers.engines.ort_engine import onnxruntime

    ort = onnxruntime(gpu=gpu)
    out: dict[str, Any] = {"ort_version": ort.__version__, "ort_providers": tuple(ort.get_available_providers())}
    if gpu and selftest and CUDA_EP in out["ort_providers"]:
        from workers.engines.selftest import ort_gpu_selftest

        out["ort_gpu_selftest_ok"], out["ort_gpu_selftest"] = ort_gpu_selftest()
    return out


def _convert_from() -> tuple[str, ...]:
    """What this node can convert to ONNX: a Paddle program (paddle2onnx, checked with ONNX Runtime),
    an ONNX model to FP16 (ONNX Runtime's float16 converter needs the onnx package)."""
    if not (_installed("onnx") and _installed("onnxruntime")):
        return ()
    return ("paddle", "onnx") if _installed("paddle2onnx") and _installed("paddle") else ("onnx",)


def detect(gpu: bool, selftest: bool = False) -> NodeInfo:
    """Probe this process. ``gpu`` asks for GPU details (initialises CUDA); ``selftest`` also checks
    each engine's numbers on the GPU against the CPU (workers/engines/selftest.py)."""
    found: dict[str, Any] = {"cpu_bf16": cpu_bf16(), "cpu_count": os.cpu_count() or 1, "convert_from": _convert_from()}
    trt = nvinfer_version() if gpu else ""
    found.update(trt_runtime=bool(trt), trt_runtime_version=trt)
    if gpu:
        found.update(gpu_details())  # nvidia-smi: name, compute capability, count (also without Paddle)
    found.update(_paddle(gpu, selftest))
    found.update(_onnxruntime(gpu, selftest))
    return NodeInfo(**found)


def detect_in_subprocess(env: dict[str, str] | None = None, gpu: bool = False, selftest: bool = False,
                         timeout_s: float = 300) -> NodeInfo:
    args = [sys.executable, "-m", "workers.engines.probe", *(["--gpu"] if gpu else []),
            *(["--selftest"] if selftest else [])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"probing the engines failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    return decode(out.stdout.strip().splitlines()[-1])


def decode(text: str) -> NodeInfo:
    return NodeInfo.from_dict(json.loads(text))


def without_selftest_verdicts(node: NodeInfo) -> NodeInfo:
    """The node as if its GPU self-tests had not been run (``gpu_selftest=warn``)."""
    return replace(node, gpu_selftest_ok=None, ort_gpu_selftest_ok=None)


if __name__ == "__main__":
    print(json.dumps(asdict(detect(gpu="--gpu" in sys.argv, selftest="--selftest" in sys.argv))))
