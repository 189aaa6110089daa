"""The GPU decoder's per-size plans and kernel argument table, checked without a GPU: a numpy
emulation reads every image's row of the table exactly as the CUDA kernels do (workers/pipeline/
resample.py: ``horizontal`` then ``vertical``, pointers resolved to the arrays they name) and must
produce the Pillow path's tensor bit for bit, for a batch mixing sizes, crops and colour orders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.imaging import Preprocessor
from common.manifest import Preprocess
from workers.pipeline.gpu_decode import image_args, size_plan
from workers.pipeline.resample import ARG, NARGS, luminance


def _jpeg(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base, "RGB").resize((width, height), Image.Resampling.BICUBIC)  # photo-like, smooth
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


class _Memory:
    """Fake device memory: an address for each array, so the table can hold 'pointers'."""

    def __init__(self) -> None:
        self.arrays: dict[int, np.ndarray] = {}
        self.next = 1 << 20

    def put(self, array: np.ndarray) -> int:
        self.arrays[self.next] = array.ravel()
        self.next += 1 << 20
        return self.next - (1 << 20)


def _emulate(args: np.ndarray, mem: _Memory, pre: Preprocessor, channels: int) -> np.ndarray:
    """The kernels' arithmetic, indexed as the kernels index it."""
    c, h, w = pre.chw
    out = np.zeros((len(args), c, h, w), np.float32)
    mid = np.zeros(int(sum(r[ARG["rows"]] * r[ARG["mid_w"]] * channels for r in args)), np.uint8)
    for row in args:
        a = {k: int(row[i]) for k, i in ARG.items()}
        src = mem.arrays[a["src"]].reshape(-1, a["pitch"])
        hb, hw = mem.arrays[a["h_bounds"]], mem.arrays[a["h_weights"]]
        rows = src[a["row0"]:a["row0"] + a["rows"]].reshape(a["rows"], -1, 3)[:, :, :]
        pix = luminance(rows)[..., None] if channels == 1 else rows
        acc = np.full((a["rows"], a["mid_w"], channels), 1 << 21, np.int64)
        for x in range(a["mid_w"]):
            xmin, xs = hb[2 * x], hb[2 * x + 1]
            wt = hw[x * a["h_ksize"]: x * a["h_ksize"] + xs].astype(np.int64)
            acc[:, x] += (pix[:, xmin:xmin + xs].astype(np.int64) * wt[None, :, None]).sum(1)
        m = np.clip(acc >> 22, 0, 255).astype(np.uint8)
        mid[a["mid_off"]:a["mid_off"] + m.size] = m.ravel()
        m = mid[a["mid_off"]:a["mid_off"] + m.size].reshape(a["rows"], a["mid_w"], channels)
        vb, vw = mem.arrays[a["v_bounds"]], mem.arrays[a["v_weights"]]
        for y in range(h):
            yy = y + a["top"]
            ymin, ys = vb[2 * yy] - a["row0"], vb[2 * yy + 1]
            wt = vw[yy * a["v_ksize"]: yy * a["v_ksize"] + ys].astype(np.int64)
            col = m[ymin:ymin + ys, a["left"]:a["left"] + w].astype(np.int64)
            v = np.clip((((col * wt[:, None, None]).sum(0)) + (1 << 21)) >> 22, 0, 255).astype(np.float32)
            for ch in range(c):
                src_c = 2 - ch if channels == 3 and pre.pre.color == "BGR" else ch
                out[a["slot"], ch, y] = v[:, src_c] * pre._a[ch] + pre._b[ch]
    return out


CASES = [
    (Preprocess(), (3, 224, 224), [(375, 500), (500, 375), (300, 300), (256, 400)]),
    (Preprocess(color="BGR", resize=(200, 180), crop=()), (3, 200, 180), [(375, 500), (240, 320)]),
    (Preprocess(color="L", resize=(32, 32), crop=(), mean=(0.5,), std=(0.5,)), (1, 32, 32), [(40, 40), (24, 50)]),
]


@pytest.mark.parametrize(("manifest_pre", "chw", "sizes"), CASES)
def test_the_argument_table_reproduces_the_pillow_path(manifest_pre: Preprocess, chw: tuple[int, int, int],
                                                       sizes: list[tuple[int, int]]) -> None:
    pre = Preprocessor(manifest_pre, chw, 10**8)
    channels = 1 if manifest_pre.color == "L" else 3
    mem = _Memory()
    jpegs = [_jpeg(hgt, wid, n) for n, (hgt, wid) in enumerate(sizes)]
    args, mid_off = np.zeros((len(jpegs), NARGS), np.int64), 0
    slots = list(reversed(range(len(jpegs))))  # rows need not follow the item order
    for n, data in enumerate(jpegs):
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        plan = size_plan(manifest_pre, chw[1], *rgb.shape[:2])
        tables = tuple(mem.put(t) for t in (plan.horizontal.bounds, plan.horizontal.weights,
                                             plan.vertical.bounds, plan.vertical.weights))
        args[n] = image_args(plan, mem.put(rgb), rgb.shape[1] * 3, tables, slots[n], mid_off)  # type: ignore[arg-type]
        mid_off += plan.rows * plan.mid_w * channels
    got = _emulate(args, mem, pre, channels)
    for n, data in enumerate(jpegs):
        # shrinking at most 2x: Pillow decodes the full image (no draft), as the GPU does
        assert np.array_equal(got[slots[n]], pre(data).array), sizes[n]


def test_a_plan_reads_only_the_rows_its_crop_needs() -> None:
    plan = size_plan(Preprocess(), 224, 375, 500)  # -> 256 x 341, crop rows 16..239
    assert (plan.mid_w, plan.top, plan.left) == (341, 16, 58)
    first, last = plan.vertical.bounds[16], plan.vertical.bounds[239]
    assert plan.row0 == first[0] and plan.row0 + plan.rows == last[0] + last[1]
    assert plan.row0 > 0 and plan.row0 + plan.rows < 375
