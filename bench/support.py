"""Shared pieces of the benchmarks: synthetic photo-like inputs and peak-memory sampling."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np


# -- inputs ------------------------------------------------------------------------------------
def synthetic_jpeg(size: int, seed: int) -> bytes:
    """A smooth, photo-like JPEG (gradients, a disc, mild noise): decodes like a real photo."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size, dtype=np.float32)
    colors = rng.uniform(40, 230, 6)
    base = np.stack([np.outer(x, 1 - x) * colors[0] + x[None, :] * colors[1] * 0.5,
                     np.outer(1 - x, x) * colors[2] + x[:, None] * colors[3] * 0.5,
                     np.full((size, size), colors[4])], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = int(rng.uniform(0.1, 0.3) * size)
    cx, cy = rng.integers(r, size - r, 2)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    noisy = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), np.int16) + rng.integers(-6, 7, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def image_folder(root: Path, n: int, size: int) -> Path:
    folder = root / f"jpeg-{size}-{n}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img_{i:06d}.jpg").write_bytes(synthetic_jpeg(size, i))
    (folder / ".complete").write_text(str(n))
    return folder


class PeakSampler(threading.Thread):
    """The peak of ``measure()`` (bytes), sampled every 200 ms until ``stop()``."""

    def __init__(self, measure: Any) -> None:
        super().__init__(daemon=True)
        self.measure, self.peak_bytes, self._stop_evt = measure, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_evt.wait(0.2):
            try:
                self.peak_bytes = max(self.peak_bytes, int(self.measure()))
            except Exception:  # a process that just exited, a Redis hiccup: skip the sample
                continue

    def stop(self) -> int:
        self._stop_evt.set()
        self.join(2)
        return self.peak_bytes


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its children (a worker and its pool), bytes."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (root, *root.children(recursive=True)))


def rss_sampler(pid: int) -> PeakSampler:
    return PeakSampler(lambda: tree_rss(pid))


