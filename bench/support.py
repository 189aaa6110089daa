"""Shared pieces of the benchmarks: synthetic photo-like inputs, peak-memory and CPU sampling, GIL profiles."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# -- inputs ------------------------------------------------------------------------------------
Size = tuple[int, int]  # (width, height)
#: The default GPU profile: a typical photo / ImageNet image (500x375 JPEG, quality 90).
PHOTO: Size = (500, 375)
SQUARE: Size = (256, 256)


def parse_sizes(text: str) -> list[Size]:
    """``"256"`` -> [(256, 256)]; ``"500x375,256x256"`` -> a mix, used in turn."""
    sizes = []
    for part in text.split(","):
        w, x, h = part.strip().lower().partition("x")
        if not w.isdigit() or not (h if x else w).isdigit():
            raise ValueError(f"image sizes must be WxH (or N for NxN), e.g. 500x375,256: {text!r}")
        sizes.append((int(w), int(h or w)))
    if not sizes or any(w < 16 or h < 16 for w, h in sizes):
        raise ValueError(f"image sizes must be WxH (or N for NxN), each side >= 16: {text!r}")
    return sizes


def synthetic_jpeg(size: int | Size, seed: int) -> bytes:
    """A smooth, photo-like JPEG (gradients, a disc, mild noise), quality 90: decodes like a real photo."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    xs, ys = np.linspace(0, 1, width, dtype=np.float32), np.linspace(0, 1, height, dtype=np.float32)
    colors = rng.uniform(40, 230, 6)
    base = np.stack([np.outer(ys, 1 - xs) * colors[0] + xs[None, :] * colors[1] * 0.5,
                     np.outer(1 - ys, xs) * colors[2] + ys[:, None] * colors[3] * 0.5,
                     np.full((height, width), colors[4])], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = int(rng.uniform(0.1, 0.3) * min(width, height))
    cx, cy = rng.integers(r, max(r + 1, width - r)), rng.integers(r, max(r + 1, height - r))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    noisy = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), np.int16) + rng.integers(-6, 7, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write(args: tuple[Path, Size, int]) -> None:
    path, size, seed = args
    path.write_bytes(synthetic_jpeg(size, seed))


def image_folder(root: Path, n: int, sizes: int | str | list[Size]) -> Path:
    """``n`` synthetic JPEGs of ``sizes`` (used in turn), made once (in parallel) and reused."""
    from concurrent.futures import ProcessPoolExecutor

    sizes = [(sizes, sizes)] if isinstance(sizes, int) else (parse_sizes(sizes) if isinstance(sizes, str) else sizes)
    tag = "_".join(f"{w}x{h}" if w != h else str(w) for w, h in sizes)
    folder = root / f"jpeg-{tag}-{n}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"img_{i:06d}.jpg", sizes[i % len(sizes)], i) for i in range(n)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write, jobs, chunksize=64))
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


def thread_cpu_s(pid: int) -> dict[tuple[int, int, str], float]:
    """CPU seconds (user + system) of every thread of a process and its children, by (pid, tid, name),
    from /proc: a worker whose Python threads add up to about one core is held by the GIL."""
    import psutil

    tick = os.sysconf("SC_CLK_TCK")
    found: dict[tuple[int, int, str], float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:  # the worker itself is gone: nothing to count
        return found
    for proc in procs:
        try:
            tasks = list(Path(f"/proc/{proc.pid}/task").iterdir())
        except OSError:  # a pool process that just exited
            continue
        for task in tasks:
            try:
                stat = (task / "stat").read_text()
                name = (task / "comm").read_text().strip()
            except OSError:  # a thread that just ended
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # fields 14 and 15 of stat(5): utime, stime
            found[(proc.pid, int(task.name), name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def cpu_use(before: dict[tuple[int, int, str], float], after: dict[tuple[int, int, str], float],
            seconds: float, top: int = 8) -> dict[str, Any]:
    """Cores a process tree used over ``seconds``, in all and by its busiest threads."""
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    busiest = sorted(used.items(), key=lambda kv: -kv[1])[:top]
    return {"cores": round(sum(used.values()) / seconds, 2), "threads": len(used),
            "busiest_threads": [[name, round(s / seconds, 2)] for (_, _, name), s in busiest]}


def rss_sampler(pid: int) -> PeakSampler:
    return PeakSampler(lambda: tree_rss(pid))




def emit_json_line(result: dict[str, Any], output: str | Path | None = None) -> str:
    """Print a benchmark's result as one JSON line, and append it to ``output`` if given."""
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if output:
        with open(output, "a") as fh:
            fh.write(line + "\n")
    sys.stdout.flush()
    return line


# -- where a worker's GIL time goes ------------------------------------------------------------
GIL_RATE = 200  # py-spy samples per second


@contextlib.contextmanager
def gil_profile(pid: int, output: str) -> Iterator[dict[str, float]]:
    """py-spy samples (``GIL_RATE``/s, without pausing the process) of the stacks of ``pid`` that hold
    the GIL while the block runs, written to ``output`` in py-spy's raw (collapsed) format; nothing
    when ``output`` is empty. With ``--subprocesses``: a worker's pool processes too (process slots).
    Yields a dict that gets the seconds recorded, once py-spy wrote its profile (samples / (seconds x
    rate) is the share of the time some thread held the GIL). py-spy is a benchmark tool only."""
    found: dict[str, float] = {}
    if not output:
        yield found
        return
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--py-spy needs py-spy on PATH (pip install py-spy)")
    log = Path(output).with_suffix(".py-spy.log")
    with log.open("wb") as err:  # a file, not a pipe nobody reads until the end
        proc = subprocess.Popen([spy, "record", "--gil", "--nonblocking", "--subprocesses", "--rate", str(GIL_RATE),
                                 "--format", "raw", "--output", output, "--pid", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=err)
    started = time.monotonic()
    try:
        yield found
    finally:
        seconds = round(time.monotonic() - started, 3)
        proc.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if Path(output).exists():
            found["seconds"] = seconds
        else:  # ptrace refused, the worker gone...: no profile, and the bench line says none
            print(f"py-spy wrote no profile: {log.read_text(errors='replace')[-500:]}", file=sys.stderr)
