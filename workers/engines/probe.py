"""Detect what this node can serve: CUDA, TensorRT (compiled in and loadable), GPUs, bf16 CPUs.

A worker's main process runs ``python -m workers.engines.probe`` in a short-lived subprocess, so
Paddle (and CUDA) are never initialised in a process that later forks.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from dataclasses import asdict
from typing import Any

from common.spec import NodeInfo

_NVINFER_NAMES = ("libnvinfer.so", "libnvinfer.so.8", "libnvinfer.so.10")


def cpu_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def nvinfer_loadable() -> bool:
    for name in _NVINFER_NAMES:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def detect(gpu: bool, selftest: bool = False) -> NodeInfo:
    """Probe Paddle in this process. ``gpu`` asks for GPU details (initialises CUDA); ``selftest``
    also checks the GPU's numbers against the CPU (workers/engines/selftest.py)."""
    from workers.engines.paddle_import import paddle as load_paddle

    paddle = load_paddle()
    cuda = bool(paddle.is_compiled_with_cuda())
    trt_version = tuple(int(x) for x in paddle.inference.get_trt_compile_version())
    name, cc, count = "", "", 0
    if gpu and cuda:
        count = paddle.device.cuda.device_count()
    if count > 0:
        name = paddle.device.cuda.get_device_name(0)
        major, minor = paddle.device.cuda.get_device_capability(0)
        cc = f"{major}.{minor}"
    ok, detail = None, ""
    if selftest and count > 0:
        from workers.engines.selftest import gpu_selftest

        ok, detail = gpu_selftest()
    return NodeInfo(cuda=cuda, trt_compile_version=trt_version, gpu_count=count,  # type: ignore[arg-type]
                    trt_runtime=cuda and trt_version != (0, 0, 0) and nvinfer_loadable(),
                    gpu_name=name, gpu_compute_capability=cc, paddle_version=paddle.__version__,
                    cpu_bf16=cpu_bf16(), cpu_count=os.cpu_count() or 1, gpu_selftest_ok=ok, gpu_selftest=detail)


def detect_in_subprocess(env: dict[str, str] | None = None, gpu: bool = False, selftest: bool = False,
                         timeout_s: float = 300) -> NodeInfo:
    args = [sys.executable, "-m", "workers.engines.probe", *(["--gpu"] if gpu else []),
            *(["--selftest"] if selftest else [])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"probing Paddle failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    data["trt_compile_version"] = tuple(data["trt_compile_version"])
    return NodeInfo(**data)


if __name__ == "__main__":
    print(json.dumps(asdict(detect(gpu="--gpu" in sys.argv, selftest="--selftest" in sys.argv))))
