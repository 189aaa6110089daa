"""Which images a GPU worker decodes on the GPU, and which go the Pillow path: a pure decision on the
file's bytes, so it is tested on any machine.

The GPU path (workers/pipeline/gpu_decode.py) takes only what it decodes to the very pixels Pillow
would see, so results and failure reasons do not change: baseline and extended-sequential Huffman
JPEGs, grey or YCbCr, whole (ending in EOI), no EXIF rotation, within the pixel limit and the
hardware decoder's size. Everything else - PNG and other formats, progressive, arithmetic-coded or
lossless JPEGs, CMYK / YCCK, rotated, truncated or corrupt files, huge images - goes the Pillow path
per image, with the same notes and errors as on a CPU worker.

``preprocess_route`` decides the same for a whole model, from its manifest's ``[preprocess]``: the
kernels do a bilinear resize (shorter side or exact H x W), a centre crop, L / RGB / BGR (BGR is
only the channel order the last pass writes) and the normalisation. A model that resizes another
way or pads (``fit = pad | height``) has every image decoded by Pillow: padding would need a fill
pass and a per-image output window in the kernels, for the small inputs (text lines, letterboxed
detection) that use it, and a second implementation of the aspect-ratio rounding that could drift
from Pillow's; one host copy of a small tensor costs less than that risk.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from common.manifest import Preprocess

GPU = "gpu"
#: Start-of-frame markers: 0xC0 baseline, 0xC1 extended sequential (Huffman): what nvJPEG decodes in
#: hardware or hybrid. 0xC2 progressive, 0xC3 lossless, 0xC5-0xC7 hierarchical, 0xC9-0xCF arithmetic.
GPU_SOF = {0xC0, 0xC1}
OTHER_SOF = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
MAX_SIDE = 16384  # nvJPEG's limit per side


@dataclass(frozen=True)
class JpegInfo:
    sof: int
    width: int
    height: int
    components: int
    adobe_transform: int | None  # APP14 "Adobe" colour transform (2: YCCK)
    exif_orientation: int
    complete: bool  # ends with EOI


def _exif_orientation(payload: bytes) -> int:
    """The orientation tag of an APP1 Exif segment (1 when absent or unreadable)."""
    if not payload.startswith(b"Exif\0\0") or len(payload) < 14:
        return 1
    tiff = payload[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for n in range(count):
            tag, _typ, _cnt, value = struct.unpack(order + "HHIH", tiff[ifd + 2 + 12 * n: ifd + 12 + 12 * n])
            if tag == 0x0112:
                return value
    except struct.error:
        return 1
    return 1


def _segments(data: bytes):
    """(marker, payload) of each marker segment up to the frame header, until start of scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        yield marker, data[pos + 4:pos + 2 + length]
        pos += 2 + length


def jpeg_info(data: bytes) -> JpegInfo | None:
    """The frame header and colour markers of a JPEG, or None if ``data`` is not a readable JPEG."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    adobe, orientation = None, 1
    for marker, segment in _segments(data):
        if marker == 0xE1:
            orientation = _exif_orientation(segment)
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe = segment[11]
        elif marker in GPU_SOF or marker in OTHER_SOF:
            if len(segment) < 6:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            complete = data.rstrip(b"\0")[-2:] == b"\xff\xd9"
            return JpegInfo(marker, width, height, segment[5], adobe, orientation, complete)
    return None


def _colour_reason(info: JpegInfo) -> str | None:
    if info.components not in (1, 3) or info.adobe_transform == 2:
        return "CMYK / YCCK JPEG"
    if info.components == 3 and info.adobe_transform == 0:
        return "RGB-coded JPEG (no YCbCr transform)"
    return None


def route(data: bytes | None, max_pixels: int) -> str:
    """``GPU``, or why this image goes the Pillow path."""
    info = jpeg_info(data) if data else None
    if info is None:
        return "not a baseline JPEG"
    if info.sof not in GPU_SOF:
        return "progressive, lossless or arithmetic-coded JPEG"
    colour = _colour_reason(info)
    if colour:
        return colour
    if info.exif_orientation not in (0, 1):
        return "EXIF orientation"
    if not info.complete:
        return "truncated JPEG"
    if info.width < 1 or info.height < 1 or info.width * info.height > max_pixels:
        return "over the pixel limit"
    if max(info.width, info.height) > MAX_SIDE:
        return "larger than the GPU decoder"
    return GPU


def preprocess_route(pre: Preprocess) -> str:
    """``GPU`` when the GPU kernels reproduce this preprocessing exactly, or why the model's images
    all go the Pillow path."""
    if pre.fit != "stretch":
        return f"fit = {pre.fit} (padding is done by Pillow)"
    if pre.interpolation != "bilinear":
        return f"{pre.interpolation} resize (the GPU kernels resize bilinearly)"
    if pre.color not in ("L", "RGB", "BGR"):
        return f"colour {pre.color}"
    return GPU
