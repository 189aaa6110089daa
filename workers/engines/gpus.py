"""The GPUs of this host, read with ``nvidia-smi`` so that no process that forks touches CUDA."""

from __future__ import annotations

import os
import subprocess


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


def gpu_details() -> dict[str, object]:
    """The GPUs this process may use: how many, and the first one's name and compute capability
    ({} without a driver). Read with nvidia-smi, so it works on a node without Paddle."""
    indices = gpu_indices()
    if not indices:
        return {"gpu_count": 0}
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(indices[0]), "--query-gpu=name,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
        name, cc = [x.strip() for x in out.stdout.strip().splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {"gpu_count": 0}
    return {"gpu_count": len(indices), "gpu_name": name, "gpu_compute_capability": cc}
