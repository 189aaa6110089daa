"""Which images take the GPU path: decided from the bytes alone, on real files of every kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.manifest import Preprocess
from tests.helpers import image_bytes
from workers.pipeline.gpu_route import GPU, jpeg_info, preprocess_route, route

LIMIT = 50_000_000


def jpeg(mode: str = "RGB", size: tuple[int, int] = (500, 375), **save: object) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def with_orientation(data: bytes, orientation: int) -> bytes:
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def test_baseline_jpegs_take_the_gpu_path() -> None:
    for data in (jpeg(), jpeg("L"), jpeg(size=(1, 1)), jpeg(subsampling=0), with_orientation(jpeg(), 1)):
        assert route(data, LIMIT) == GPU
    info = jpeg_info(jpeg(size=(640, 480)))
    assert (info.sof, info.width, info.height, info.components, info.complete) == (0xC0, 640, 480, 3, True)
    assert jpeg_info(jpeg("L")).components == 1


@pytest.mark.parametrize(("data", "reason"), [
    (jpeg(progressive=True), "progressive, lossless or arithmetic-coded JPEG"),
    (jpeg("CMYK"), "CMYK / YCCK JPEG"),
    (with_orientation(jpeg(), 6), "EXIF orientation"),
    (jpeg()[:5000], "truncated JPEG"),
    (image_bytes("RGB", (64, 48), "PNG"), "not a baseline JPEG"),
    (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not a baseline JPEG"),
    (b"", "not a baseline JPEG"),
    (None, "not a baseline JPEG"),
    (b"GIF89a....", "not a baseline JPEG"),
])
def test_everything_else_takes_the_pillow_path(data: bytes | None, reason: str) -> None:
    assert route(data, LIMIT) == reason


def test_limits() -> None:
    assert route(jpeg(size=(500, 375)), 500 * 375 - 1) == "over the pixel limit"
    assert route(jpeg(size=(500, 375)), 500 * 375) == GPU
    big = bytearray(jpeg(size=(64, 64)))
    sof = big.index(b"\xff\xc0")
    big[sof + 5:sof + 9] = (64).to_bytes(2, "big") + (20000).to_bytes(2, "big")  # claims 20000 px wide
    assert route(bytes(big), 10**10) == "larger than the GPU decoder"


@pytest.mark.parametrize("pre", [
    Preprocess(),  # ImageNet: shorter side 256, centre crop 224, RGB
    Preprocess(color="BGR"),  # the kernels write the channels reversed
    Preprocess(color="L", resize=(32, 32), crop=(), mean=(0.5,), std=(0.5,)),
    Preprocess(resize=(48, 192), crop=()),
], ids=["imagenet", "bgr", "grey-exact", "stretch-non-square"])
def test_preprocessing_the_kernels_reproduce_takes_the_gpu_path(pre: Preprocess) -> None:
    assert preprocess_route(pre) == GPU


@pytest.mark.parametrize(("pre", "reason"), [
    (Preprocess(resize=(48, 320), crop=(), fit="height", pad_value=127.5), "fit = height (padding is done by Pillow)"),
    (Preprocess(resize=(640, 640), crop=(), fit="pad", pad_align="center"), "fit = pad (padding is done by Pillow)"),
    (Preprocess(color="BGR", resize=(64, 64), crop=(), fit="pad"), "fit = pad (padding is done by Pillow)"),
    (Preprocess(interpolation="bicubic"), "bicubic resize (the GPU kernels resize bilinearly)"),
    (Preprocess(interpolation="nearest"), "nearest resize (the GPU kernels resize bilinearly)"),
], ids=["height", "pad", "pad-bgr", "bicubic", "nearest"])
def test_preprocessing_the_kernels_do_not_reproduce_takes_the_pillow_path(pre: Preprocess, reason: str) -> None:
    assert preprocess_route(pre) == reason
