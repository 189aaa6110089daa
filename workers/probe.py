"""Detect what this node can serve: CUDA, TensorRT (compiled in and loadable), GPUs, bf16 CPUs.

The launcher runs ``python -m workers.probe`` in a short-lived subprocess, so Paddle (and CUDA)
are never initialised in a process that later forks; worker children call ``detect()`` directly.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import zlib  # noqa: F401  # must precede paddle: paddlepaddle 2.6.2 segfaults on first zlib use otherwise
from dataclasses import asdict
from typing import Any

from workers.spec import NodeInfo

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
    also checks the GPU's numbers against the CPU (workers/selftest.py)."""
    import paddle

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
        from workers.selftest import gpu_selftest

        ok, detail = gpu_selftest()
    return NodeInfo(cuda=cuda, trt_compile_version=trt_version, gpu_count=count,  # type: ignore[arg-type]
                    trt_runtime=cuda and trt_version != (0, 0, 0) and nvinfer_loadable(),
                    gpu_name=name, gpu_compute_capability=cc, paddle_version=paddle.__version__,
                    cpu_bf16=cpu_bf16(), cpu_count=os.cpu_count() or 1, gpu_selftest_ok=ok, gpu_selftest=detail)


def detect_in_subprocess(env: dict[str, str] | None = None, gpu: bool = False, selftest: bool = False,
                         timeout_s: float = 300) -> NodeInfo:
    args = [sys.executable, "-m", "workers.probe"] + (["--gpu"] if gpu else []) + (["--selftest"] if selftest else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"probing Paddle failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    data["trt_compile_version"] = tuple(data["trt_compile_version"])
    return NodeInfo(**data)


def gpu_indices() -> list[int]:
    """Physical GPU indices visible to this process, without touching CUDA (nvidia-smi)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in out.stdout.split() if line.strip().isdigit()]


def gpu_memory(index: int) -> tuple[str, int, int] | None:
    """(name, used MiB, total MiB) of a physical GPU via nvidia-smi, or None."""
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(index), "--query-gpu=name,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True)
        name, used, total = [x.strip() for x in out.stdout.strip().split(",")]
        return name, int(used), int(total)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


if __name__ == "__main__":
    print(json.dumps(asdict(detect(gpu="--gpu" in sys.argv, selftest="--selftest" in sys.argv))))
