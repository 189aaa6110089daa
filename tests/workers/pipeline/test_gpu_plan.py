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


def test_the_kernels_read_the_columns_the_table_writes() -> None:
    """The CUDA source's enum and NARGS against ``ARG`` / ``NARGS`` of the Python that fills the table."""
    import re

    from workers.pipeline.resample import KERNELS

    enum = [name.strip() for name in re.search(r"enum \{([^}]*)\}", KERNELS).group(1).split(",")]  # type: ignore[union-attr]
    cuda_names = {"SRC": "src", "PITCH": "pitch", "ROW0": "row0", "ROWS": "rows", "MID_W": "mid_w", "HB": "h_bounds",
                  "HW": "h_weights", "HK": "h_ksize", "VB": "v_bounds", "VW": "v_weights", "VK": "v_ksize",
                  "TOP": "top", "LEFT": "left", "SLOT": "slot", "MID_OFF": "mid_off"}
    assert [cuda_names[n] for n in enum] == sorted(ARG, key=ARG.get)
    assert int(re.search(r"#define NARGS (\d+)", KERNELS).group(1)) == NARGS >= len(ARG)  # type: ignore[union-attr]


def test_a_sizes_tables_are_one_upload_and_the_addresses_point_into_it() -> None:
    """``GpuDecoder._size`` with a stand-in for CuPy that records what it uploads: each of the four
    addresses is where its table starts in the one flat array (int32: 4 bytes an element), and a size
    is uploaded once."""
    from types import SimpleNamespace

    from workers.pipeline.gpu_decode import GpuDecoder

    uploads = []

    def asarray(host: np.ndarray):
        uploads.append(host)
        return SimpleNamespace(data=SimpleNamespace(ptr=1 << 30), host=host)

    dec = GpuDecoder.__new__(GpuDecoder)
    dec.cp, dec.pre, dec.chw, dec._sizes, dec.table_bytes = SimpleNamespace(asarray=asarray), \
        SimpleNamespace(pre=Preprocess()), (3, 224, 224), {}, 0
    plan, addresses = dec._size(375, 500)
    assert dec._size(375, 500)[1] == addresses and len(uploads) == 1  # built once
    flat = uploads[0]
    for address, table in zip(addresses, (plan.horizontal.bounds, plan.horizontal.weights, plan.vertical.bounds,
                                          plan.vertical.weights), strict=True):
        start = (address - (1 << 30)) // 4
        assert np.array_equal(flat[start:start + table.size], table.ravel())
    assert dec.table_bytes == flat.nbytes


class _Stream:
    """Stands in for a CuPy stream: a context, a pointer, a no-op synchronize."""

    ptr = 0

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def synchronize(self) -> None:
        return None


def test_decode_routes_refusals_and_failures_and_places_every_row() -> None:
    """``GpuDecoder.decode``'s bookkeeping, run with numpy standing in for CuPy and a decoder that
    refuses what it is given (no GPU here): images routed to Pillow, images the GPU refused, a corrupt
    one; each usable image's row is the Pillow path's tensor, in item order, and the counts say why."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from common.errors import ImageError
    from common.schemas import PayloadItem
    from tests.helpers import image_bytes
    from workers.pipeline.decode import decode_all
    from workers.pipeline.gpu_decode import GpuDecoder
    from workers.pipeline.gpu_route import GPU

    pre = Preprocessor(Preprocess(), (3, 224, 224), 10**8)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(buf, "JPEG", progressive=True)
    datas = [_jpeg(375, 500, 1), image_bytes("RGB", (64, 48), "PNG"), b"\xff\xd8\xff\xe0 not really", buf.getvalue(),
             _jpeg(300, 300, 2)]
    items = [PayloadItem(i, f"img{i}", d) for i, d in enumerate(datas)]
    dec = GpuDecoder.__new__(GpuDecoder)
    dec.pre, dec.chw, dec.model_route, dec._lock, dec._reuse = pre, pre.chw, GPU, threading.Lock(), []
    dec.cp = SimpleNamespace(empty=np.empty, asarray=np.asarray, float32=np.float32)
    dec.stream = _Stream()
    dec.nv = SimpleNamespace(CodeStream=lambda d: d)
    dec.params = None
    dec.decoder = SimpleNamespace(decode=lambda streams, **_: [None] * len(streams))  # refuses everything
    with ThreadPoolExecutor(2) as pool:
        got = dec.decode(items, lambda subset: decode_all(pool, 2, pre, subset, pre.chw))
    assert got.on_gpu == 0 and got.good == [0, 1, 3, 4]
    assert isinstance(got.decoded[2], ImageError)
    assert got.routed == {"GPU decoder refused it": 2, "not a baseline JPEG": 2,
                          "progressive, lossless or arithmetic-coded JPEG": 1}
    for row, i in enumerate(got.good):
        assert np.array_equal(got.tensor[row], pre(datas[i]).array), i
    assert got.h2d_bytes == 4 * got.tensor[0].nbytes


def test_warm_up_fails_loudly_when_the_gpu_refuses_and_close_frees_the_decoder() -> None:
    """``GpuDecoder.warm`` decodes one JPEG on the GPU or raises (a worker whose decoder cannot decode
    says so at start, not in its first batch); ``close`` drops nvImageCodec's decoder and the buffers."""
    import threading
    from types import SimpleNamespace

    import pytest

    from workers.pipeline.gpu_decode import GpuDecoder
    from workers.pipeline.gpu_route import GPU

    pre = Preprocessor(Preprocess(), (3, 224, 224), 10**8)
    dec = GpuDecoder.__new__(GpuDecoder)
    dec.pre, dec.chw, dec.model_route, dec._lock, dec._reuse = pre, pre.chw, GPU, threading.Lock(), []
    dec.cp = SimpleNamespace(empty=np.empty, asarray=np.asarray, float32=np.float32)
    dec.stream, dec.nv, dec.params = _Stream(), SimpleNamespace(CodeStream=lambda d: d), None
    dec._sizes, dec._mid = {}, None
    dec.decoder = SimpleNamespace(decode=lambda streams, **_: [None] * len(streams))  # refuses everything
    with pytest.raises(RuntimeError, match=r"did not decode its warm-up JPEG \(\{'GPU decoder refused it': 1\}\)"):
        dec.warm()
    dec.close()
    assert dec.decoder is None and dec._reuse is None and dec._sizes == {}
    with pytest.raises(RuntimeError, match="was closed"):
        dec.warm()
