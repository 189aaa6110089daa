"""Decode and preprocess a batch on the GPU: JPEG bytes in, the model's input tensor out, in device memory.

JPEGs the router sends to the GPU (workers/pipeline/gpu_route.py) are decoded in one batched call
to NVIDIA's nvImageCodec (the hardware JPEG engine where the GPU has one, else its hybrid
CPU/GPU decoder), with fancy chroma upsampling as libjpeg-turbo does it. Two CUDA kernels
(workers/pipeline/resample.py) then resize every image with Pillow's coefficients and fixed-point
arithmetic, crop, convert the colour and normalise exactly as the manifest says, straight into the
batch tensor. Images the router sends to Pillow - and any the GPU decoder gives up on - are decoded
by the Pillow path and copied into their rows; so are all images of a model whose preprocessing the
kernels do not reproduce (padding, a resize other than bilinear: ``gpu_route.preprocess_route``).
The tensor goes to the engine through ONNX Runtime's IO binding: no host round trip.

Needs ``nvidia-nvimgcodec-cu13`` (+ ``nvidia-nvjpeg``) and CuPy; ``available()`` says whether they load.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ImageError
from common.imaging import Preprocessor
from common.manifest import Preprocess
from common.schemas import PayloadItem
from workers.pipeline.gpu_route import GPU, preprocess_route, route
from workers.pipeline.resample import KERNELS, coefficients

THREADS = 256
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
    """One per pipeline slot and model preprocessing (the kernels and decoder are reused)."""

    def __init__(self, pre: Preprocessor, device_id: int = 0) -> None:
        import cupy
        from nvidia import nvimgcodec

        self.cp, self.nv, self.pre = cupy, nvimgcodec, pre
        self.chw = pre.chw
        kinds = nvimgcodec.BackendKind
        self.decoder = nvimgcodec.Decoder(device_id=device_id, backends=[
            nvimgcodec.Backend(kinds.HW_GPU_ONLY), nvimgcodec.Backend(kinds.HYBRID_CPU_GPU),
            nvimgcodec.Backend(kinds.GPU_ONLY)], options=":fancy_upsampling=1")
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                              allow_any_depth=False, sample_format=nvimgcodec.SampleFormat.I_RGB)
        with _LOCK:  # compiling the module once per process
            module = cupy.RawModule(code=KERNELS)
        self.horizontal, self.vertical = module.get_function("horizontal"), module.get_function("vertical")
        self.a = cupy.asarray(pre._a, dtype=cupy.float32)
        self.b = cupy.asarray(pre._b, dtype=cupy.float32)
        self.channels = 1 if pre.pre.color == "L" else 3
        self.model_route = preprocess_route(pre.pre)  # GPU, or why no image of this model goes there

    def _route(self, item: PayloadItem) -> str:
        if item.error:
            return "unreadable"
        return route(item.data, self.pre.max_pixels) if self.model_route == GPU else self.model_route

    def decode(self, items: list[PayloadItem], cpu_decode) -> GpuBatch:
        """``cpu_decode(items) -> (host buffer, decoded)``: the Pillow path for the items it is handed."""
        cp = self.cp
        routes = [self._route(it) for it in items]
        gpu_idx = [i for i, r in enumerate(routes) if r == GPU]
        images = self.decoder.decode([self.nv.CodeStream(items[i].data) for i in gpu_idx], params=self.params) \
            if gpu_idx else []
        decoded_gpu = {i: img for i, img in zip(gpu_idx, images, strict=True) if img is not None}
        cpu_idx = [i for i in range(len(items)) if i not in decoded_gpu]
        host, cpu_decoded = cpu_decode([items[i] for i in cpu_idx]) if cpu_idx else (None, [])
        decoded: list[tuple[str, ...] | ImageError] = [()] * len(items)
        for n, i in enumerate(cpu_idx):
            decoded[i] = cpu_decoded[n]
        good = [i for i in range(len(items)) if not isinstance(decoded[i], ImageError)]
        slot = {i: n for n, i in enumerate(good)}
        tensor = cp.empty((len(good), *self.chw), cp.float32)
        if decoded_gpu:
            self._preprocess({i: decoded_gpu[i] for i in decoded_gpu}, slot, tensor)
        h2d = 0
        for n, i in enumerate(cpu_idx):
            if i in slot:
                tensor[slot[i]] = cp.asarray(host[n])
                h2d += host[n].nbytes
        cp.cuda.get_current_stream().synchronize()  # the engine runs on its own stream
        routed: dict[str, int] = {}
        for i in cpu_idx:
            reason = routes[i] if routes[i] != GPU else "GPU decoder refused it"
            routed[reason] = routed.get(reason, 0) + 1
        h2d += sum(len(items[i].data or b"") for i in decoded_gpu)  # the encoded bytes, to the decoder
        return GpuBatch(tensor, decoded, good, len(decoded_gpu), routed, h2d)

    def _preprocess(self, images: dict[int, Any], slot: dict[int, int], out: Any) -> None:
        """Both resample passes for the GPU-decoded images, into their rows of ``out``."""
        cp = self.cp
        order = sorted(images)
        plans = [self._plan(images[i]) for i in order]
        t = _tables(plans, [slot[i] for i in order], self.channels)
        dev = {k: cp.asarray(v) for k, v in t.items() if k != "mid_total"}
        mid = cp.empty(t["mid_total"], cp.uint8)
        c, h, w = self.chw
        n = len(order)
        grid = ((int(t["mid_sizes"].max()) + THREADS - 1) // THREADS, n)
        self.horizontal(grid, (THREADS,), (dev["src"], dev["pitch"], dev["row0"], dev["rows"], dev["out_w"],
                                           dev["b_off_h"], dev["w_off_h"], dev["k_h"], dev["bounds"], dev["weights"],
                                           mid, dev["mid_off"], np.int32(self.channels)))
        grid = ((c * h * w + THREADS - 1) // THREADS, n)
        self.vertical(grid, (THREADS,), (mid, dev["mid_off"], dev["out_w"], dev["row0"], dev["b_off_v"],
                                         dev["w_off_v"], dev["k_v"], dev["bounds"], dev["weights"], dev["top"],
                                         dev["left"], dev["slot"], np.int32(h), np.int32(w), np.int32(c),
                                         np.int32(self.pre.pre.color == "BGR"), self.a, self.b, out))

    def _plan(self, image: Any) -> dict[str, Any]:
        cai = image.__cuda_array_interface__
        height, width = cai["shape"][0], cai["shape"][1]
        pitch = cai["strides"][0] if cai.get("strides") else width * 3
        (rh, rw), (top, left) = geometry(self.pre.pre, height, width)
        ch, cv = coefficients(width, rw), coefficients(height, rh)
        out_h = self.chw[1]
        first = int(cv.bounds[top, 0])
        last = int(cv.bounds[top + out_h - 1, 0] + cv.bounds[top + out_h - 1, 1])
        return {"ptr": cai["data"][0], "pitch": pitch, "row0": first, "rows": last - first, "out_w": rw,
                "ch": ch, "cv": cv, "top": top, "left": left, "image": image}


def _offsets(sizes: list[int], start: int = 0) -> np.ndarray:
    return (start + np.cumsum([0, *sizes])[:-1]).astype(np.int32)


def _tables(plans: list[dict[str, Any]], slots: list[int], channels: int) -> dict[str, Any]:
    """The kernels' per-image arguments, and every coefficient table concatenated (horizontal ones first)."""
    hb = [p["ch"].bounds.shape[0] for p in plans]
    hw = [p["ch"].weights.size for p in plans]
    mid_sizes = np.asarray([p["rows"] * p["out_w"] * channels for p in plans], np.int64)
    ints = {"pitch": "pitch", "row0": "row0", "rows": "rows", "out_w": "out_w", "top": "top", "left": "left"}
    out: dict[str, Any] = {k: np.asarray([p[v] for p in plans], np.int32) for k, v in ints.items()}
    out.update(
        src=np.asarray([p["ptr"] for p in plans], np.uint64),
        bounds=np.concatenate([p["ch"].bounds.ravel() for p in plans] + [p["cv"].bounds.ravel() for p in plans]),
        weights=np.concatenate([p["ch"].weights.ravel() for p in plans] + [p["cv"].weights.ravel() for p in plans]),
        b_off_h=_offsets(hb), w_off_h=_offsets(hw),
        b_off_v=_offsets([p["cv"].bounds.shape[0] for p in plans], sum(hb)),
        w_off_v=_offsets([p["cv"].weights.size for p in plans], sum(hw)),
        k_h=np.asarray([p["ch"].ksize for p in plans], np.int32),
        k_v=np.asarray([p["cv"].ksize for p in plans], np.int32),
        slot=np.asarray(slots, np.int32), mid_off=(np.cumsum([0, *mid_sizes])[:-1]).astype(np.int64),
        mid_sizes=mid_sizes, mid_total=int(mid_sizes.sum()))
    return out
