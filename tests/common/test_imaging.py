"""The Preprocessor against independent numpy references, and every readable rejection."""

from __future__ import annotations

import dataclasses
import io
import math
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from common.errors import ImageError
from common.imaging import Preprocessor, fit_geometry
from common.manifest import Preprocess
from tests.helpers import image_bytes

IDENTITY = {"scale": 1.0, "mean": (0.0,), "std": (1.0,)}  # output = 8-bit pixel values


def make(color: str = "RGB", resize: tuple[int, ...] = (8, 8), crop: tuple[int, ...] = (),
         chw: tuple[int, int, int] | None = None, max_pixels: int = 10**7, strict: bool = False,
         **pre: object) -> Preprocessor:
    settings = {**IDENTITY, **pre}
    p = Preprocess(color=color, resize=resize, crop=crop, **settings)  # type: ignore[arg-type]
    if chw is None:
        final = crop or resize
        chw = (1 if color == "L" else 3, final[0], final[-1])
    return Preprocessor(p, chw, max_pixels, strict_modes=strict)


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(width: int, height: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), color)


# -- values ---------------------------------------------------------------------------------------
def test_gray_png_equals_the_manual_formula() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (10, 20), dtype=np.uint8)  # h=10, w=20
    scale, mean, std = 1 / 255, 0.5, 0.25
    pre = make("L", resize=(10, 20), scale=scale, mean=(mean,), std=(std,))
    out = pre(encode(Image.fromarray(pixels, "L")))
    expected = (pixels.astype(np.float64) * scale - mean) / std
    assert out.array.dtype == np.float32 and out.array.shape == (1, 10, 20)
    assert out.array.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out.array[0], expected, rtol=0, atol=1e-5)
    assert out.notes == ()


def test_gray_resize_nearest_matches_repeat() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20  # h=3, w=4
    pre = make("L", resize=(6, 8), interpolation="nearest", scale=1 / 255, mean=(0.5,), std=(0.5,))
    out = pre(encode(Image.fromarray(pixels, "L")))
    big = pixels.repeat(2, axis=0).repeat(2, axis=1).astype(np.float64)
    np.testing.assert_allclose(out.array[0], (big / 255 - 0.5) / 0.5, atol=1e-5)


def test_rgb_to_bgr_channel_order_and_per_channel_normalisation() -> None:
    data = encode(rgb(5, 4, (10, 100, 200)))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    as_rgb = make("RGB", resize=(4, 5), scale=1 / 255, mean=mean, std=std)(data).array
    as_bgr = make("BGR", resize=(4, 5), scale=1 / 255, mean=mean, std=std)(data).array
    assert as_rgb.shape == as_bgr.shape == (3, 4, 5)
    for c, value in enumerate((10, 100, 200)):
        np.testing.assert_allclose(as_rgb[c], (value / 255 - mean[c]) / std[c], atol=1e-5)
    for c, value in enumerate((200, 100, 10)):  # blue first; mean/std still apply per output channel
        np.testing.assert_allclose(as_bgr[c], (value / 255 - mean[c]) / std[c], atol=1e-5)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_shorter_side_resize_then_centre_crop(interpolation: str) -> None:
    """A landscape image of constant 2x2 blocks, halved and centre-cropped: any sampler gives the blocks."""
    blocks = np.random.default_rng(2).integers(0, 256, (10, 20), dtype=np.uint8)  # h=10, w=20
    image = blocks.repeat(2, axis=0).repeat(2, axis=1)  # 40x20 (w x h)
    pre = make("L", resize=(10,), crop=(10, 10), interpolation=interpolation)
    out = pre(encode(Image.fromarray(image, "L")))
    assert out.array.shape == (1, 10, 10)
    if interpolation == "nearest":
        np.testing.assert_array_equal(out.array[0], blocks[:, 5:15])
    else:  # smoothing filters blend block edges a little; the centre crop still comes from columns 5..14
        assert np.abs(out.array[0] - blocks[:, 5:15]).mean() < 40
        assert np.abs(out.array[0] - blocks[:, 0:10]).mean() > np.abs(out.array[0] - blocks[:, 5:15]).mean()


def test_shorter_side_resize_portrait() -> None:
    blocks = np.random.default_rng(3).integers(0, 256, (20, 10), dtype=np.uint8)  # h=20, w=10
    image = blocks.repeat(2, axis=0).repeat(2, axis=1)  # 20x40 (w x h)
    out = make("L", resize=(10,), crop=(10, 10), interpolation="nearest")(encode(Image.fromarray(image, "L")))
    np.testing.assert_array_equal(out.array[0], blocks[5:15, :])


def test_shorter_side_resize_without_crop_keeps_aspect() -> None:
    out = make("RGB", resize=(16,), crop=(), chw=(3, 16, 32))(encode(rgb(64, 32, (1, 2, 3))))
    assert out.array.shape == (3, 16, 32)


def test_into_writes_a_batch_slice() -> None:
    pre = make("RGB", resize=(4, 4))
    batch = np.zeros((3, 3, 4, 4), np.float32)
    notes = pre.into(encode(rgb(4, 4, (7, 8, 9))), batch[1])
    assert notes == ()
    assert batch[0].sum() == 0 and batch[2].sum() == 0
    assert batch[1, 0, 0, 0] == 7 and batch[1, 2, 3, 3] == 9


def test_one_pixel_image() -> None:
    out = make("RGB", resize=(3, 3))(encode(rgb(1, 1, (50, 60, 70))))
    assert out.array.shape == (3, 3, 3)
    np.testing.assert_allclose(out.array[:, 1, 1], [50, 60, 70], atol=1)
    assert make("L", resize=(2,), crop=(2, 2))(encode(Image.new("L", (1, 1), 9))).array.shape == (1, 2, 2)


# -- aspect-preserving fits ------------------------------------------------------------------------
def paddleocr_rec(pixels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PaddleOCR's RecResizeImg (resize_norm_img) on an HWC uint8 image, with Pillow's bilinear resize:
    height fixed, width ceil(h * ratio) capped at the input width, normalised, zero padding on the right."""
    height, width = pixels.shape[:2]
    ratio = width / float(height)
    resized_w = out_w if math.ceil(out_h * ratio) > out_w else math.ceil(out_h * ratio)
    resized = np.asarray(Image.fromarray(pixels).resize((resized_w, out_h), Image.Resampling.BILINEAR))
    norm = (resized.astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    padded = np.zeros((3, out_h, out_w), np.float32)
    padded[:, :, :resized_w] = norm
    return padded


@pytest.mark.parametrize(("width", "height"), [(100, 32), (2000, 32), (48, 48), (7, 40)])
def test_fit_height_is_paddleocr_text_line_resize(width: int, height: int) -> None:
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pre = make("RGB", resize=(48, 320), fit="height", pad_value=127.5, scale=1 / 255, mean=(0.5,), std=(0.5,))
    out = pre(encode(Image.fromarray(pixels))).array
    expected = paddleocr_rec(pixels, 48, 320)
    assert out.shape == (3, 48, 320)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    resized_w = min(320, math.ceil(48 * width / height))
    assert np.all(out[:, :, resized_w:] == 0)  # pad_value 127.5 is exactly 0 after this normalisation


@pytest.mark.parametrize(("size", "placed"), [
    ((40, 20), ((16, 8), (4, 0))),  # landscape: full width, centred vertically
    ((20, 40), ((8, 16), (0, 4))),  # portrait: full height, centred horizontally
    ((33, 17), ((16, 8), (4, 0))),  # 17 * 16 / 33 = 8.24 -> 8 rows
    ((16, 16), ((16, 16), (0, 0))),
])
def test_fit_pad_letterboxes_in_the_centre(size: tuple[int, int], placed: tuple) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    pre = make("L", resize=(16, 16), fit="pad", pad_align="center", pad_value=114)
    out = pre(encode(Image.fromarray(pixels, "L"))).array[0]
    (new_w, new_h), (top, left) = placed
    scaled = np.asarray(Image.fromarray(pixels, "L").resize((new_w, new_h), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[top:top + new_h, left:left + new_w], scaled)
    mask = np.ones_like(out, bool)
    mask[top:top + new_h, left:left + new_w] = False
    assert np.all(out[mask] == 114)


def test_fit_pad_topleft_and_normalised_padding() -> None:
    pre = make("RGB", resize=(8, 8), fit="pad", pad_align="topleft", pad_value=255, scale=1 / 255,
               mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 1.0))
    out = pre(encode(rgb(16, 8, (0, 0, 0)))).array  # 2:1 -> 8 x 4 at the top
    np.testing.assert_allclose(out[:, :4, :], np.broadcast_to(np.array([-1.0, -0.5, 0.0])[:, None, None], (3, 4, 8)),
                               atol=1e-6)
    np.testing.assert_allclose(out[:, 4:, :], np.broadcast_to(np.array([1.0, 1.5, 1.0])[:, None, None], (3, 4, 8)),
                               atol=1e-6)


def test_bgr_reverses_the_channels_of_every_pixel() -> None:
    """BGR is RGB with the channel axis reversed, pixel for pixel, on the stretch and the pad paths."""
    pixels = np.random.default_rng(9).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels))
    for options in ({"resize": (12, 20)}, {"resize": (10, 10), "fit": "pad", "pad_value": 3}):
        as_rgb = make("RGB", **options)(data).array  # type: ignore[arg-type]
        as_bgr = make("BGR", **options)(data).array  # type: ignore[arg-type]
        np.testing.assert_array_equal(as_bgr, as_rgb[::-1])
    np.testing.assert_array_equal(make("BGR", resize=(12, 20))(data).array[0], pixels[:, :, 2])


def test_fit_pad_on_a_large_jpeg_uses_draft_decoding_and_keeps_the_geometry() -> None:
    data = encode(rgb(1600, 800, (200, 50, 10)), "JPEG", quality=95)
    out = make("RGB", resize=(64, 64), fit="pad", pad_align="center", pad_value=0)(data).array
    assert np.all(out[:, :16] == 0) and np.all(out[:, 48:] == 0)
    np.testing.assert_allclose(out[:, 16:48].mean(axis=(1, 2)), [200, 50, 10], atol=3)


def test_fit_geometry_rounding() -> None:
    pad = Preprocess(resize=(48, 320), crop=(), fit="pad")
    assert fit_geometry(pad, 1000, 10) == ((320, 3), (0, 0))  # 10 * 0.32 = 3.2 rows
    assert fit_geometry(pad, 10000, 1) == ((320, 1), (0, 0))  # never below one pixel
    height = dataclasses.replace(pad, fit="height", pad_align="center")
    assert fit_geometry(height, 100, 32) == ((150, 48), (0, 85))
    assert fit_geometry(height, 5000, 10) == ((320, 48), (0, 0))  # capped, squeezed to the input width


# -- rejections -----------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG header for a 1-bit image of any size, with (almost) no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file (0 bytes)"),
    (None, "empty file (0 bytes)"),
    (b"GIF89a? no, just some text\n", "not an image"),
    (b"hello, world\n" * 10, "not an image: the format was not recognised"),
    (b"BM" + b"\x00" * 60, "corrupt image header"),
])
def test_unusable_bytes(data: bytes | None, reason: str) -> None:
    with pytest.raises(ImageError) as info:
        make()(data)
    assert reason in str(info.value)


def test_png_with_broken_header_checksum() -> None:
    good = encode(rgb(10, 10, (1, 2, 3)))
    broken = good[:29] + bytes([good[29] ^ 0xFF]) + good[30:]  # the IHDR CRC
    with pytest.raises(ImageError) as info:
        make()(broken)
    assert str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt: str) -> None:
    data = image_bytes("RGB", (64, 48), fmt)
    with pytest.raises(ImageError, match=f"corrupt or truncated {fmt}"):
        make()(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = huge_png_header(20000, 20000)
    assert len(bomb) < 200
    started = time.perf_counter()
    with pytest.raises(ImageError) as info:
        make(max_pixels=50_000_000)(bomb)
    assert time.perf_counter() - started < 1.0
    assert "20000x20000 = 400000000 pixels, over the limit of 50000000 (max_image_pixels)" in str(info.value)


def test_pixel_limit_is_inclusive() -> None:
    data = encode(rgb(10, 10, (0, 0, 0)))
    assert make(max_pixels=100)(data).array.shape == (3, 8, 8)
    with pytest.raises(ImageError, match="over the limit of 99"):
        make(max_pixels=99)(data)


# -- unusual modes --------------------------------------------------------------------------------
def gray16(values: list[int]) -> bytes:
    return encode(Image.fromarray(np.array([values], dtype=np.uint16)))


def rgba_with_transparent_pixel() -> bytes:
    img = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    img.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    return encode(img)


def palette_image(transparent: bool = False) -> bytes:
    img = Image.new("P", (2, 1))
    img.putpalette([200, 10, 10, 10, 200, 10] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    return encode(img, transparency=1) if transparent else encode(img)


def cmyk_white() -> bytes:
    return encode(Image.new("CMYK", (2, 1), (0, 0, 0, 0)), "JPEG", quality=100)


UNUSUAL = {
    "16-bit": (gray16([65535, 256, 255]), "I;16 scaled to 8-bit"),
    "rgba": (rgba_with_transparent_pixel(), "alpha composited over white"),
    "palette": (palette_image(), "palette image converted"),
    "cmyk": (cmyk_white(), "CMYK converted to RGB"),
    "la": (encode(Image.new("LA", (2, 1), (40, 255))), "alpha composited over white"),
    "1-bit": (encode(Image.new("1", (2, 1), 1)), None),
}


@pytest.mark.parametrize("case", sorted(UNUSUAL))
def test_strict_modes_reject_unusual_modes(case: str) -> None:
    data, _ = UNUSUAL[case]
    with pytest.raises(ImageError, match=r"image mode \S+ is not accepted \(strict_image_modes is on\)"):
        make("RGB", resize=(1, 2), chw=(3, 1, 2), strict=True)(data)


@pytest.mark.parametrize("case", sorted(UNUSUAL))
def test_default_converts_unusual_modes_with_a_note(case: str) -> None:
    data, note = UNUSUAL[case]
    out = make("RGB", resize=(1, 2), chw=(3, 1, 2))(data)
    assert out.array.shape == (3, 1, 2)
    if note:
        assert note in out.notes


def test_strict_modes_accept_plain_rgb_and_gray() -> None:
    assert make("RGB", resize=(2, 2), strict=True)(encode(rgb(2, 2, (1, 2, 3)))).notes == ()
    assert make("L", resize=(2, 2), strict=True)(encode(Image.new("L", (2, 2), 5))).notes == ()


def test_sixteen_bit_values_scale_to_eight_bit() -> None:
    out = make("L", resize=(1, 3))(gray16([65535, 256, 255]))
    np.testing.assert_array_equal(out.array[0, 0], [255, 1, 0])


def test_transparent_pixel_becomes_white() -> None:
    out = make("RGB", resize=(1, 2))(rgba_with_transparent_pixel())
    np.testing.assert_array_equal(out.array[:, 0, 0], [10, 20, 30])  # opaque: unchanged
    np.testing.assert_array_equal(out.array[:, 0, 1], [255, 255, 255])  # transparent: white


def test_palette_values_and_palette_transparency() -> None:
    out = make("RGB", resize=(1, 2))(palette_image())
    np.testing.assert_array_equal(out.array[:, 0, 0], [200, 10, 10])
    np.testing.assert_array_equal(out.array[:, 0, 1], [10, 200, 10])
    out = make("RGB", resize=(1, 2))(palette_image(transparent=True))
    np.testing.assert_array_equal(out.array[:, 0, 1], [255, 255, 255])
    assert "alpha composited over white" in out.notes


def test_cmyk_white_is_white() -> None:
    out = make("RGB", resize=(1, 2))(cmyk_white())
    assert out.array.min() >= 250


# -- orientation and animation --------------------------------------------------------------------
def jpeg_with_orientation(orientation: int | None) -> bytes:
    """A 40x20 (w x h) JPEG whose stored left half is red and right half blue."""
    img = rgb(40, 20, (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    if orientation is None:
        return encode(img, "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _red_at(arr: np.ndarray, y: int, x: int) -> bool:
    r, _, b = arr[:, y, x]
    return bool(r > 200 and b < 60)


def test_no_orientation_keeps_the_stored_layout() -> None:
    out = make("RGB", resize=(20,), crop=(), chw=(3, 20, 40))(jpeg_with_orientation(None))
    assert out.array.shape == (3, 20, 40) and out.notes == ()
    assert _red_at(out.array, 10, 5) and not _red_at(out.array, 10, 35)
    assert make("RGB", resize=(20,), crop=(), chw=(3, 20, 40))(jpeg_with_orientation(1)).notes == ()


def test_exif_orientation_6_rotates_clockwise() -> None:
    out = make("RGB", resize=(20,), crop=(), chw=(3, 40, 20))(jpeg_with_orientation(6))
    assert out.array.shape == (3, 40, 20)  # now portrait
    assert "EXIF orientation 6 applied" in out.notes
    assert _red_at(out.array, 5, 10) and not _red_at(out.array, 35, 10)  # stored left is now on top


def test_exif_orientation_8_rotates_counter_clockwise() -> None:
    out = make("RGB", resize=(20,), crop=(), chw=(3, 40, 20))(jpeg_with_orientation(8))
    assert out.array.shape == (3, 40, 20)
    assert "EXIF orientation 8 applied" in out.notes
    assert _red_at(out.array, 35, 10) and not _red_at(out.array, 5, 10)  # stored left is now at the bottom


def test_large_jpeg_draft_decoding_keeps_values() -> None:
    """JPEG draft mode (libjpeg downscaling while decoding) still gives the right colours and size."""
    out = make("RGB", resize=(16,), crop=(16, 16))(encode(rgb(800, 600, (30, 120, 220)), "JPEG", quality=95))
    assert out.array.shape == (3, 16, 16)
    np.testing.assert_allclose(out.array.mean(axis=(1, 2)), [30, 120, 220], atol=4)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [rgb(6, 4, (255, 0, 0)), rgb(6, 4, (0, 0, 255)), rgb(6, 4, (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = make("RGB", resize=(4, 6))(data)
    assert "animated: first of 3 frames used" in out.notes
    np.testing.assert_allclose(out.array.mean(axis=(1, 2)), [255, 0, 0], atol=2)
