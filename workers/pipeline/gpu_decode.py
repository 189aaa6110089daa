"""Decode and preprocess a batch on the GPU: JPEG bytes in, the model's input tensor out, in device memory.

JPEGs the router sends to the GPU (workers/pipeline/gpu_route.py) are decoded in one batched call
to NVIDIA's nvImageCodec (the hardware JPEG engine where the GPU has one, else its hybrid
CPU/GPU decoder), with fancy chroma upsampling as libjpeg-turbo does it. Two CUDA kernels
(workers/pipeline/resample.py) then resize every image with Pillow's coefficients and fixed-point
arithmetic, crop, convert the colour and normalise exactly as the manifest says, straight into the
batch tensor.

What a batch costs beyond the decode itself is kept to a few small copies: the coefficient tables
of each input size are built once and stay on the device (``SizePlan``, at most ``MAX_SIZES`` sizes),
each image's kernel arguments are one row of a table copied in one transfer, the decoder's output
buffers are reused from batch to batch, and all of it runs on the decoder's own CUDA stream.

Images the router sends to Pillow - and any the GPU decoder gives up on - are decoded
by the Pillow path and copied into their rows; so are all images of a model whose preprocessing the
kernels do not reproduce (padding, a resize other than bilinear: ``gpu_route.preprocess_route``).
The tensor goes to the engine through ONNX Runtime's IO binding: no host round trip.

Needs ``nvidia-nvimgcodec-cu13`` (+ ``nvidia-nvjpeg``) and CuPy; ``available()`` says whether they load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ImageError
from common.imaging import Preprocessor
from common.manifest import Preprocess
from common.schemas import PayloadItem
from workers.pipeline.gpu_route import GPU, preprocess_route, route
from workers.pipeline.resample import ARG, KERNELS, NARGS, Coeffs, coefficients

log = logging.getLogger("trtbatch.gpu_decode")
#: the Pillow path for the items it is handed: (host rows, each item's notes or error)
CpuDecode = Callable[[list[PayloadItem]], tuple[np.ndarray, list[Any]]]
THREADS = 256
MAX_SIZES = 4096  # input sizes whose tables stay on the device; more and the cache starts over
_LOCK = threading.Lock()


def available() -> bool:
    """Whether this process could decode on the GPU (the libraries are installed)."""
    return importlib.util.find_spec("cupy") is not None and importlib.util.find_spec("nvidia.nvimgcodec") is not None


@dataclass
class GpuBatch:
    """A decoded batch: the device tensor of the usable images (in item order), per item its notes or
    its error, which items are in the tensor, and how the items were decoded."""

    tensor: Any  # cupy.ndarray [len(good), C, H, W] float32
    decoded: list[tuple[str, ...] | ImageError]
    good: list[int]
    on_gpu: int = 0
    routed: dict[str, int] = field(default_factory=dict)  # why images went the Pillow path
    h2d_bytes: int = 0


@dataclass(frozen=True)
class SizePlan:
    """How one input size is resized and cropped: the source rows the output needs (``row0`` and
    ``rows``: the vertical taps of the cropped rows), the width after the horizontal pass, the crop
    offset, and both axes' coefficient tables."""

    row0: int
    rows: int
    mid_w: int
    top: int
    left: int
    horizontal: Coeffs
    vertical: Coeffs


def size_plan(pre: Preprocess, out_h: int, height: int, width: int) -> SizePlan:
    """The plan of an input of ``height`` x ``width`` for a model whose input is ``out_h`` rows high."""
    (rh, rw), (top, left) = geometry(pre, height, width)
    ch, cv = coefficients(width, rw), coefficients(height, rh)
    first = int(cv.bounds[top, 0])
    last = int(cv.bounds[top + out_h - 1, 0] + cv.bounds[top + out_h - 1, 1])
    return SizePlan(first, last - first, rw, top, left, ch, cv)


def geometry(pre: Preprocess, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized (h, w), crop offset (top, left)) - the arithmetic of Preprocessor._resize_crop."""
    if len(pre.resize) == 1:
        scale = pre.resize[0] / min(width, height)
        size = (max(pre.resize[0], round(height * scale)), max(pre.resize[0], round(width * scale)))
    else:
        size = (pre.resize[0], pre.resize[1])
    if not pre.crop:
        return size, (0, 0)
    return size, ((size[0] - pre.crop[0]) // 2, (size[1] - pre.crop[1]) // 2)


class GpuDecoder:
    """One per model preprocessing and process slot, or a pool of them shared by thread slots
    (workers/pipeline/gpu_decoders.py): its batches are decoded one at a time (the kernels, decoder,
    stream and tables are reused)."""

    def __init__(self, pre: Preprocessor, device_id: int = 0, cpu_threads: int = 0, backend: str = "hybrid") -> None:
        import cupy
        from nvidia import nvimgcodec

        self.cp, self.nv, self.pre = cupy, nvimgcodec, pre
        self.chw = pre.chw
        kinds = nvimgcodec.BackendKind
        # cpu_threads: nvImageCodec's own threads (JPEG parsing, the hybrid decoder's Huffman stage);
        # 0 would give every slot of a worker one per core
        # settings.gpu_jpeg_backend: hybrid only, or the hardware engine then hybrid; GPU_ONLY (none on the
        # H200) last
        order = [kinds.HYBRID_CPU_GPU] if backend == "hybrid" else [kinds.HW_GPU_ONLY, kinds.HYBRID_CPU_GPU]
        self.decoder = nvimgcodec.Decoder(device_id=device_id, max_num_cpu_threads=cpu_threads, backends=[
            nvimgcodec.Backend(kind) for kind in [*order, kinds.GPU_ONLY]], options=":fancy_upsampling=1")
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                              allow_any_depth=False, sample_format=nvimgcodec.SampleFormat.I_RGB)
        with _LOCK:  # compiling the module once per process
            module = cupy.RawModule(code=KERNELS)
        self.horizontal, self.vertical = module.get_function("horizontal"), module.get_function("vertical")
        self.stream = cupy.cuda.Stream(non_blocking=True)
        with self.stream:
            self.a = cupy.asarray(pre._a, dtype=cupy.float32)
            self.b = cupy.asarray(pre._b, dtype=cupy.float32)
        self.channels = 1 if pre.pre.color == "L" else 3
        self.model_route = preprocess_route(pre.pre)  # GPU, or why no image of this model goes there
        self._sizes: dict[tuple[int, int], tuple[SizePlan, Any, tuple[int, int, int, int]]] = {}
        #: the last batch's decoded images, whose buffers take the next one (None: this version cannot)
        self._reuse: list[Any] | None = []
        self._mid: Any = None
        self._lock = threading.Lock()
        self.table_bytes = 0  # coefficient tables sent to the device so far

    def warm(self) -> float:
        """Decode one small JPEG now (the CUDA kernels compile, nvImageCodec starts its hardware decoder),
        so a worker's first batch does not pay for it; seconds taken."""
        import io
        import time

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (256, 192), (120, 60, 200)).save(buf, "JPEG", quality=90)
        started = time.perf_counter()
        out = self.decode([PayloadItem(0, "warm-up.jpg", buf.getvalue())], self._placeholder_rows)
        if out.on_gpu != 1:
            raise RuntimeError(f"the GPU decoder did not decode its warm-up JPEG ({out.routed})")
        return time.perf_counter() - started

    def _placeholder_rows(self, items: list[PayloadItem]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """What the warm-up puts in place of the Pillow path: zero rows (it only wants to know why)."""
        return np.zeros((len(items), *self.chw), np.float32), [()] * len(items)

    def close(self) -> None:
        """Free nvImageCodec's decoder and the device buffers once the last batch is done. Called at
        shutdown: freed by the garbage collector (a function returning, the interpreter exiting),
        nvImageCodec 0.9's decoder crashed the process on the H200."""
        with self._lock:
            self.stream.synchronize()
            self._reuse, self._mid = None, None
            self._sizes.clear()
            self.decoder = None

    def _route(self, item: PayloadItem) -> str:
        if item.error:
            return "unreadable"
        return route(item.data, self.pre.max_pixels) if self.model_route == GPU else self.model_route

    @contextlib.contextmanager
    def held(self) -> Iterator[GpuDecoder]:
        """This decoder, for one batch's GPU part (its buffers, stream and tables are the batch's)."""
        with self._lock:
            yield self

    def decode(self, items: list[PayloadItem], cpu_decode: CpuDecode) -> GpuBatch:
        """``cpu_decode(items) -> (host buffer, decoded)``: the Pillow path for the items it is handed."""
        return self.decode_with(items, cpu_decode, self.held)

    def decode_with(self, items: list[PayloadItem], cpu_decode: CpuDecode,
                    take: Callable[[], contextlib.AbstractContextManager[GpuDecoder]]) -> GpuBatch:
        """``decode``, with the GPU part on the decoder ``take()`` holds (this one, or a free one of a
        pool of decoders of the same preprocessing): the images routed to Pillow are decoded before
        it is taken, the few the GPU decoder refuses while it is held."""
        routes = [self._route(it) for it in items]
        gpu_idx = [i for i, r in enumerate(routes) if r == GPU]
        routed_idx = [i for i, r in enumerate(routes) if r != GPU]
        decoded: list[tuple[str, ...] | ImageError] = [()] * len(items)
        host = self._pillow(items, routed_idx, cpu_decode, decoded)
        with take() as gpu:
            images = gpu._decode_jpegs([items[i].data for i in gpu_idx]) if gpu_idx else []
            on_gpu = {i: img for i, img in zip(gpu_idx, images, strict=True) if img is not None}
            refused = [i for i in gpu_idx if i not in on_gpu]
            if refused:  # rare: decoded by Pillow while the GPU's images wait in their buffers
                host.update(self._pillow(items, refused, cpu_decode, decoded))
            good = [i for i in range(len(items)) if not isinstance(decoded[i], ImageError)]
            tensor, h2d = gpu._fill(items, on_gpu, host, {i: n for n, i in enumerate(good)})
        routed: dict[str, int] = {}
        for i in [*routed_idx, *refused]:
            reason = routes[i] if routes[i] != GPU else "GPU decoder refused it"
            routed[reason] = routed.get(reason, 0) + 1
        return GpuBatch(tensor, decoded, good, len(on_gpu), routed, h2d)

    @staticmethod
    def _pillow(items: list[PayloadItem], idx: list[int], cpu_decode: CpuDecode, decoded: list[Any]
                ) -> dict[int, np.ndarray]:
        """Pillow-decode ``items[idx]``: their outcomes into ``decoded``, their usable rows returned."""
        if not idx:
            return {}
        buf, outcomes = cpu_decode([items[i] for i in idx])
        rows = {}
        for n, i in enumerate(idx):
            decoded[i] = outcomes[n]
            if not isinstance(outcomes[n], ImageError):
                rows[i] = buf[n]
        return rows

    def _fill(self, items: list[PayloadItem], on_gpu: dict[int, Any], host: dict[int, np.ndarray],
              slot: dict[int, int]) -> tuple[Any, int]:
        """The batch tensor: the GPU-decoded images resampled into their rows, the Pillow rows copied
        into theirs; returns it with the bytes sent to the device."""
        cp = self.cp
        h2d = sum(len(items[i].data or b"") for i in on_gpu)  # the encoded bytes, to the decoder
        with self.stream:
            tensor = cp.empty((len(slot), *self.chw), cp.float32)
            if on_gpu:
                h2d += self._preprocess(on_gpu, slot, tensor)
            if host:  # the Pillow path's rows: one copy, then into their places
                order = sorted(host)
                rows = np.stack([host[i] for i in order])
                tensor[cp.asarray([slot[i] for i in order])] = cp.asarray(rows)
                h2d += rows.nbytes
        self.stream.synchronize()  # the engine runs on its own stream
        return tensor, h2d

    def _decode_jpegs(self, datas: list[bytes]) -> list[Any]:
        """One batched decode on this decoder's stream, into the previous batch's buffers when it had as many."""
        if self.decoder is None:
            raise RuntimeError("this GPU decoder was closed (the worker is shutting down)")
        streams = [self.nv.CodeStream(d) for d in datas]
        if self._reuse is None:
            return self._into_new(streams)
        reuse = self._reuse[:len(streams)] if len(self._reuse) >= len(streams) else None
        try:
            images = self.decoder.decode(streams, images=reuse, params=self.params, cuda_stream=self.stream.ptr)
        except Exception as exc:  # a version or a case that cannot reuse buffers: new buffers from now on
            log.warning("nvImageCodec buffer reuse failed (%s: %s); decoding into new buffers", type(exc).__name__,
                        exc)
            self._reuse = None
            return self._into_new(streams)
        if reuse is not None and any(img is None for img in images):
            # a refusal may be the reused buffer's doing: those images again, into new buffers
            again = [n for n, img in enumerate(images) if img is None]
            retry = self._into_new([streams[n] for n in again])
            for n, img in zip(again, retry, strict=True):
                images[n] = img
        if all(img is not None for img in images) and len(images) >= len(self._reuse):
            self._reuse = list(images)
        return images

    def _into_new(self, streams: list[Any]) -> list[Any]:
        """A batched decode into buffers nvImageCodec allocates."""
        return self.decoder.decode(streams, params=self.params, cuda_stream=self.stream.ptr)

    def _size(self, height: int, width: int) -> tuple[SizePlan, tuple[int, int, int, int]]:
        """The plan of one input size and the device addresses of its tables, built once."""
        key = (height, width)
        found = self._sizes.get(key)
        if found is None:
            plan = size_plan(self.pre.pre, self.chw[1], height, width)
            tables = [plan.horizontal.bounds, plan.horizontal.weights, plan.vertical.bounds, plan.vertical.weights]
            host = np.concatenate([t.ravel() for t in tables]).astype(np.int32)
            flat = self.cp.asarray(host)
            self.table_bytes += host.nbytes
            starts = np.cumsum([0] + [t.size for t in tables])[:-1] * 4 + flat.data.ptr
            found = (plan, flat, tuple(int(x) for x in starts))
            self._sizes[key] = found
        return found[0], found[2]  # type: ignore[return-value]

    def _preprocess(self, images: dict[int, Any], slot: dict[int, int], out: Any) -> int:
        """Both resample passes for the GPU-decoded images, into their rows of ``out``; returns the bytes copied."""
        cp = self.cp
        order = sorted(images)
        cais = [images[i].__cuda_array_interface__ for i in order]
        if len(self._sizes) + len({tuple(c["shape"][:2]) for c in cais} - self._sizes.keys()) > MAX_SIZES:
            self._sizes.clear()  # between batches: the last one was synchronised, no kernel reads its tables
        tables_before = self.table_bytes
        args = np.zeros((len(order), NARGS), np.int64)
        mid_off = 0
        for n, (i, cai) in enumerate(zip(order, cais, strict=True)):
            height, width = cai["shape"][0], cai["shape"][1]
            plan, (hb, hw, vb, vw) = self._size(height, width)
            pitch = cai["strides"][0] if cai.get("strides") else width * 3
            args[n] = image_args(plan, cai["data"][0], pitch, (hb, hw, vb, vw), slot[i], mid_off)
            mid_off += plan.rows * plan.mid_w * self.channels
        if self._mid is None or self._mid.size < mid_off:
            self._mid = cp.empty(max(mid_off, 1 << 20), cp.uint8)
        dev_args = cp.asarray(args)
        c, h, w = self.chw
        widest = int((args[:, ARG["rows"]] * args[:, ARG["mid_w"]]).max()) * self.channels
        self.horizontal(((widest + THREADS - 1) // THREADS, len(order)), (THREADS,),
                        (dev_args, self._mid, np.int32(self.channels)))
        self.vertical(((c * h * w + THREADS - 1) // THREADS, len(order)), (THREADS,),
                      (dev_args, self._mid, np.int32(h), np.int32(w), np.int32(c),
                       np.int32(self.pre.pre.color == "BGR"), self.a, self.b, out))
        return args.nbytes + self.table_bytes - tables_before


def image_args(plan: SizePlan, src: int, pitch: int, tables: tuple[int, int, int, int], slot: int,
               mid_off: int) -> np.ndarray:
    """One image's row of the kernels' argument table (``resample.ARG`` names the columns)."""
    row = np.zeros(NARGS, np.int64)
    values = {"src": src, "pitch": pitch, "row0": plan.row0, "rows": plan.rows, "mid_w": plan.mid_w,
              "h_bounds": tables[0], "h_weights": tables[1], "h_ksize": plan.horizontal.ksize,
              "v_bounds": tables[2], "v_weights": tables[3], "v_ksize": plan.vertical.ksize,
              "top": plan.top, "left": plan.left, "slot": slot, "mid_off": mid_off}
    for name, value in values.items():
        row[ARG[name]] = value
    return row
