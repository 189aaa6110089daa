"""The GPU path's resize is Pillow's, bit for bit: its coefficient tables and fixed-point passes,
emulated in numpy, against ``PIL.Image.resize`` itself on many sizes and both colour modes.

Pillow runs a horizontal pass, then a vertical one; since Pillow 13 (python-pillow/Pillow#9549) it
runs the vertical pass first when the height shrinks much more than the width, which moves some
pixels by one level. The GPU keeps the classic order: equal to Pillow's two single-axis passes for
every size, and to ``resize`` itself for photo-like sizes (both axes scaled alike)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workers.pipeline.resample import coefficients, emulate, luminance


def _pillow(rgb: np.ndarray, dst: tuple[int, int], color: str, two_pass: bool) -> np.ndarray:
    img = Image.fromarray(rgb, "RGB")
    if color == "L":
        img = img.convert("L")
    if two_pass:  # horizontal, then vertical: one pass each
        img = img.resize((dst[1], img.size[1]), Image.Resampling.BILINEAR)
    return np.asarray(img.resize((dst[1], dst[0]), Image.Resampling.BILINEAR))


PHOTOS = [((375, 500), (256, 341)), ((500, 375), (341, 256)), ((8, 8), (32, 32)), ((224, 224), (224, 224)),
          ((1, 1), (3, 7)), ((480, 640), (256, 341)), ((3000, 4000), (256, 341)), ((333, 500), (256, 384))]
ODD = [((1000, 37), (9, 256)), ((233, 34), (131, 4)), ((100, 100), (50, 200)), ((2, 299), (298, 3))]


@pytest.mark.parametrize(("src", "dst"), PHOTOS)
@pytest.mark.parametrize("color", ["RGB", "L"])
def test_the_emulated_passes_equal_pillows_resize(src: tuple[int, int], dst: tuple[int, int], color: str) -> None:
    rgb = np.random.default_rng(sum(src) + sum(dst)).integers(0, 256, (*src, 3), dtype=np.uint8)
    got = emulate(rgb, dst, color)
    assert got.shape[:2] == dst
    assert np.array_equal(got[..., 0] if color == "L" else got, _pillow(rgb, dst, color, two_pass=False))


@pytest.mark.parametrize(("src", "dst"), PHOTOS + ODD)
@pytest.mark.parametrize("color", ["RGB", "L"])
def test_the_emulated_passes_equal_pillows_two_passes(src: tuple[int, int], dst: tuple[int, int], color: str) -> None:
    rgb = np.random.default_rng(sum(src) * 7 + sum(dst)).integers(0, 256, (*src, 3), dtype=np.uint8)
    got = emulate(rgb, dst, color)
    assert np.array_equal(got[..., 0] if color == "L" else got, _pillow(rgb, dst, color, two_pass=True))


def test_luminance_is_pillows() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(luminance(rgb), np.asarray(Image.fromarray(rgb, "RGB").convert("L")))


def test_coefficients_are_normalised_and_cached() -> None:
    c = coefficients(375, 256)
    assert c.ksize == 5 and c.bounds.shape == (256, 2) and c.weights.shape == (256, 5)
    assert np.all(np.abs(c.weights.sum(1) - (1 << 22)) <= c.ksize)  # rounding of each weight
    assert coefficients(375, 256) is c
