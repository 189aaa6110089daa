"""Pillow's resize, reproduced for the GPU: the same coefficients, the same fixed-point arithmetic.

The Pillow path (common/imaging.py) resizes with ``Image.resize(size, BILINEAR)``: a separable
triangle filter whose support widens with the downscale factor (it antialiases), applied as a
horizontal pass into an 8-bit image and then a vertical pass, each in 22-bit fixed point
(Pillow's Resample.c: ``precompute_coeffs``, ``normalize_coeffs_8bpc``, ``ImagingResample*_8bpc``).
``coefficients`` computes those tables exactly as Pillow does, on the host; the CUDA kernels
(``KERNELS``) apply them per output pixel, with the crop, colour conversion and normalisation of the
model's manifest fused into the vertical pass. ``emulate`` runs the kernels' arithmetic in numpy, so
the exact-match claim is tested on machines without a GPU (tests/workers/pipeline/test_resample.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

PRECISION_BITS = 32 - 8 - 2
FILTERS = {"bilinear": 1.0}  # filter name -> support; the GPU path does bilinear (every manifest's default)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


@dataclass(frozen=True)
class Coeffs:
    """One axis: for every output index, the first input index, the tap count, and ``ksize`` fixed-point
    weights (int32)."""

    bounds: np.ndarray  # [out, 2] int32: xmin, xsize
    weights: np.ndarray  # [out, ksize] int32
    ksize: int


@functools.lru_cache(maxsize=512)
def coefficients(in_size: int, out_size: int) -> Coeffs:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for a bilinear resize of one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = FILTERS["bilinear"] * filterscale
    ksize = math.ceil(support) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int32)
    weights = np.zeros((out_size, ksize), np.int32)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = _bilinear((np.arange(xmax) + xmin - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, -0.5 + w * (1 << PRECISION_BITS), 0.5 + w * (1 << PRECISION_BITS))
        weights[xx, :xmax] = fixed.astype(np.int64).astype(np.int32)  # C's (int) truncates toward zero
        bounds[xx] = (xmin, xmax)
    return Coeffs(bounds, weights, ksize)


def _clip8(acc: np.ndarray) -> np.ndarray:
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L (ITU-R 601-2 in 16-bit fixed point, rounded)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def emulate(rgb: np.ndarray, out_hw: tuple[int, int], color: str) -> np.ndarray:
    """Horizontal then vertical pass, as Pillow (and the kernels) compute them: uint8 [H', W', C]."""
    src = luminance(rgb)[..., None] if color == "L" else rgb
    h, w = src.shape[:2]
    ch, cv = coefficients(w, out_hw[1]), coefficients(h, out_hw[0])
    acc = np.full((h, out_hw[1], src.shape[2]), 1 << (PRECISION_BITS - 1), np.int64)
    for t in range(ch.ksize):
        cols = np.clip(ch.bounds[:, 0] + t, 0, w - 1)
        live = (t < ch.bounds[:, 1])[None, :, None]
        acc += np.where(live, src[:, cols].astype(np.int64) * ch.weights[:, t][None, :, None], 0)
    mid = _clip8(acc)
    acc = np.full((out_hw[0], out_hw[1], src.shape[2]), 1 << (PRECISION_BITS - 1), np.int64)
    for t in range(cv.ksize):
        rows = np.clip(cv.bounds[:, 0] + t, 0, h - 1)
        live = (t < cv.bounds[:, 1])[:, None, None]
        acc += np.where(live, mid[rows].astype(np.int64) * cv.weights[:, t][:, None, None], 0)
    return _clip8(acc)


# One thread per output element; blockIdx.y is the image. Each image's arguments are one row of
# ``NARGS`` int64 in ``args`` (``ARG`` names the columns; ``workers/pipeline/gpu_decode.py`` fills
# them): its pixels, its window of source rows, and device pointers to the coefficient tables of its
# size, which the decoder keeps on the device per input size. Multiply and add are kept apart
# (__fmul_rn, __fadd_rn) so the float result is rounded exactly as numpy's two passes round it on
# the Pillow path (no fused multiply-add).
ARG = {name: i for i, name in enumerate(
    ("src", "pitch", "row0", "rows", "mid_w", "h_bounds", "h_weights", "h_ksize", "v_bounds", "v_weights",
     "v_ksize", "top", "left", "slot", "mid_off"))}
NARGS = 16

KERNELS = r"""
#define NARGS 16
#define A(i, k) args[(long long)(i) * NARGS + (k)]
enum { SRC, PITCH, ROW0, ROWS, MID_W, HB, HW, HK, VB, VW, VK, TOP, LEFT, SLOT, MID_OFF };
extern "C" {
__device__ __forceinline__ unsigned char clip8(long long acc) {
    long long v = acc >> 22;
    return (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
}
__device__ __forceinline__ int lum(const unsigned char* p) {
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

// pass 1: rows [row0, row0 + rows) of an RGB image (row pitch in bytes) -> mid [rows, mid_w, channels]
__global__ void horizontal(const long long* args, unsigned char* mid, int channels) {
    int i = blockIdx.y;
    int mid_w = (int)A(i, MID_W);
    long long n = A(i, ROWS) * mid_w * channels;
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    int c = (int)(e % channels);
    long long px = e / channels;
    int x = (int)(px % mid_w);
    int y = (int)(px / mid_w);
    const unsigned char* row = (const unsigned char*)A(i, SRC) + (A(i, ROW0) + y) * A(i, PITCH);
    const int* bounds = (const int*)A(i, HB);
    int ksize = (int)A(i, HK);
    int xmin = bounds[2 * x], xs = bounds[2 * x + 1];
    const int* w = (const int*)A(i, HW) + (long long)x * ksize;
    long long acc = 1LL << 21;
    for (int t = 0; t < xs; ++t) {
        const unsigned char* p = row + 3 * (xmin + t);
        int v = channels == 1 ? lum(p) : p[c];
        acc += (long long)v * w[t];
    }
    mid[A(i, MID_OFF) + e] = clip8(acc);
}

// pass 2: mid -> out[slot, c, y, x] (float32 CHW), rows/cols offset by the centre crop, channels
// reversed for BGR, normalised as value * a[c] + b[c]
__global__ void vertical(const long long* args, const unsigned char* mid, int out_h, int out_w, int channels,
                         int bgr, const float* a, const float* b, float* out) {
    int i = blockIdx.y;
    long long n = (long long)out_h * out_w * channels;
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    int x = (int)(e % out_w);
    int y = (int)((e / out_w) % out_h);
    int c = (int)(e / out_w / out_h);
    int src_c = (channels == 3 && bgr) ? 2 - c : c;
    int yy = y + (int)A(i, TOP), xx = x + (int)A(i, LEFT);
    const int* bounds = (const int*)A(i, VB);
    int ksize = (int)A(i, VK);
    int ymin = bounds[2 * yy] - (int)A(i, ROW0), ys = bounds[2 * yy + 1];
    const int* w = (const int*)A(i, VW) + (long long)yy * ksize;
    const unsigned char* m = mid + A(i, MID_OFF);
    long long mid_w = A(i, MID_W);
    long long acc = 1LL << 21;
    for (int t = 0; t < ys; ++t)
        acc += (long long)m[((long long)(ymin + t) * mid_w + xx) * channels + src_c] * w[t];
    float v = (float)clip8(acc);
    out[A(i, SLOT) * n + e] = __fadd_rn(__fmul_rn(v, a[c]), b[c]);
}
}
"""
