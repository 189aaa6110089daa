"""Image decoding and preprocessing, shared by workers, model training and benchmarks.

One function turns encoded bytes into the model's input array, so a model trained through it
(``trtbatch models make digits``) sees exactly what workers feed it. Pillow releases the GIL while
decoding and resizing, so a thread pool decodes a batch in parallel.

``preprocess.fit`` = ``pad`` / ``height`` keeps the aspect ratio and pads (``fit_geometry``): the
padding is written straight into the output, normalised like a pixel of ``pad_value``.

Inputs that are valid but unusual are converted and the conversion is reported in ``notes``:
EXIF orientation is applied, animated images use their first frame, CMYK/palette/16-bit/alpha
images are brought to the model's colour mode (alpha composited over white). With
``strict_image_modes`` those modes are rejected instead. Inputs that cannot be used raise
``ImageError`` with a readable reason: empty, not an image, corrupt or truncated, over the pixel
limit (decompression bombs are refused before any pixel is decoded).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import ImageError
from common.manifest import Preprocess

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}
_CONVERTED = {"CMYK", "P", "1", "F", "YCbCr", "LAB", "HSV"} | _SIXTEEN_BIT | _ALPHA

# Our own pixel limit is checked before decoding; Pillow's warning would only duplicate it.
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Decoded:
    array: np.ndarray  # float32, CHW
    notes: tuple[str, ...] = ()


class Preprocessor:
    """Bytes -> float32 CHW array for one manifest's ``[preprocess]`` table."""

    def __init__(self, pre: Preprocess, chw: tuple[int, int, int], max_pixels: int,
                 strict_modes: bool = False) -> None:
        self.pre = pre
        self.chw = chw
        self.max_pixels = max_pixels
        self.strict_modes = strict_modes
        channels = chw[0]
        mean = np.resize(np.asarray(pre.mean, np.float32), channels)
        std = np.resize(np.asarray(pre.std, np.float32), channels)
        # (x * scale - mean) / std  ==  x * a + b, two passes over the pixels instead of three.
        self._a = (np.float32(pre.scale) / std).astype(np.float32)
        self._b = (-mean / std).astype(np.float32)
        self._resample = _RESAMPLE[pre.interpolation]

    def __call__(self, data: bytes | None) -> Decoded:
        out = np.empty(self.chw, np.float32)
        notes = self.into(data, out)
        return Decoded(out, notes)

    def into(self, data: bytes | None, out: np.ndarray) -> tuple[str, ...]:
        """Decode straight into ``out`` (a CHW float32 slice of a batch buffer); returns the notes."""
        notes: list[str] = []
        img = self._open(data, notes)
        img = self._to_color(img, notes)
        if self.pre.fit == "stretch":
            self._normalise_into(self._resize_crop(img), out)
        else:
            self._pad_into(img, out)
        return tuple(notes)

    # -- steps ---------------------------------------------------------------------------
    def _open(self, data: bytes | None, notes: list[str]) -> Image.Image:
        if not data:
            raise ImageError("empty file (0 bytes)")
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise ImageError("not an image: the format was not recognised") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"corrupt image header: {exc}") from exc
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(f"image has no pixels ({width}x{height})")
        if width * height > self.max_pixels:
            raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the "
                             f"limit of {self.max_pixels} (max_image_pixels)")
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            notes.append(f"animated: first of {frames} frames used")
        self._draft(img)
        try:
            img.load()
            return self._orient(img, notes)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageError(f"corrupt or truncated {img.format or 'image'}: {exc}") from exc

    def _draft(self, img: Image.Image) -> None:
        """JPEG draft mode: let libjpeg downscale by 1/2..1/8 while decoding when we shrink anyway."""
        if img.format != "JPEG":
            return
        width, height = img.size
        if len(self.pre.resize) == 1:
            factor = self.pre.resize[0] / min(width, height)
        elif self.pre.fit == "pad":
            factor = min(self.pre.resize[0] / height, self.pre.resize[1] / width)
        elif self.pre.fit == "height":  # a capped width only shrinks further: the height decides
            factor = self.pre.resize[0] / height
        else:
            factor = max(self.pre.resize[0] / height, self.pre.resize[1] / width)
        if factor < 0.5:
            target = (max(1, int(width * factor + 1)), max(1, int(height * factor + 1)))
            img.draft(img.mode if img.mode in ("RGB", "L") else None, target)

    @staticmethod
    def _orient(img: Image.Image, notes: list[str]) -> Image.Image:
        orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
        if orientation and orientation != 1:
            img = ImageOps.exif_transpose(img)
            notes.append(f"EXIF orientation {orientation} applied")
        return img

    def _to_color(self, img: Image.Image, notes: list[str]) -> Image.Image:
        mode = img.mode
        if mode in _CONVERTED and self.strict_modes:
            raise ImageError(f"image mode {mode} is not accepted (strict_image_modes is on)")
        if mode in _SIXTEEN_BIT or mode == "F":
            img = _to_8bit(img)
            notes.append(f"{mode} scaled to 8-bit")
        elif mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            notes.append("palette image converted")
        elif mode == "CMYK":
            img = img.convert("RGB")
            notes.append("CMYK converted to RGB")
        if img.mode in _ALPHA:
            img = _flatten_alpha(img)
            notes.append("alpha composited over white")
        target = "L" if self.pre.color == "L" else "RGB"
        return img if img.mode == target else img.convert(target)

    def _resize_crop(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        if len(self.pre.resize) == 1:
            short = self.pre.resize[0]
            scale = short / min(width, height)
            size = (max(short, round(width * scale)), max(short, round(height * scale)))
        else:
            size = (self.pre.resize[1], self.pre.resize[0])
        if size != img.size:
            img = img.resize(size, self._resample)
        if self.pre.crop:
            crop_h, crop_w = self.pre.crop
            left = (img.size[0] - crop_w) // 2
            top = (img.size[1] - crop_h) // 2
            img = img.crop((left, top, left + crop_w, top + crop_h))
        return img

    def _pad_into(self, img: Image.Image, out: np.ndarray) -> None:
        """``fit = pad | height``: the scaled image into its place in ``out``, the padding around it
        normalised like a pixel of value ``pad_value`` (the same float32 steps, so an integer pad
        value gives exactly what a pixel of that value gives)."""
        (new_w, new_h), (top, left) = fit_geometry(self.pre, img.size[0], img.size[1])
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), self._resample)
        pad = np.float32(self.pre.pad_value) * self._a + self._b
        out[...] = pad[:, None, None]
        self._normalise_into(img, out[:, top:top + new_h, left:left + new_w])

    def _normalise_into(self, img: Image.Image, out: np.ndarray) -> None:
        """(pixel * scale - mean) / std as pixel * a + b, computed straight from the uint8 pixels
        into the CHW output: two passes, no temporaries (5x faster than broadcasting over HWC)."""
        pixels = np.asarray(img)
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if self.pre.color == "BGR":
            chw = chw[::-1]
        np.multiply(chw, self._a[:, None, None], out=out)
        np.add(out, self._b[:, None, None], out=out)


def fit_geometry(pre: Preprocess, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``fit = pad | height``: the scaled image's (width, height) and its (top, left) in the input,
    for a ``width`` x ``height`` source. See common/manifest.py for the rules."""
    out_h, out_w = pre.resize
    if pre.fit == "height":  # PaddleOCR RecResizeImg: ceil(h * ratio), capped at the input width
        new_h, new_w = out_h, min(out_w, max(1, math.ceil(out_h * (width / float(height)))))
    else:
        scale = min(out_h / height, out_w / width)
        new_h = min(out_h, max(1, round(height * scale)))
        new_w = min(out_w, max(1, round(width * scale)))
    if pre.pad_align == "center":
        return (new_w, new_h), ((out_h - new_h) // 2, (out_w - new_w) // 2)
    return (new_w, new_h), (0, 0)


def _to_8bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode == "F":
        arr8 = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        arr8 = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(arr8, "L")


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
