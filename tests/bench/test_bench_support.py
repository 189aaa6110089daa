"""Benchmark helpers that decide what is measured: image sizes, synthetic photos, Ray's start-up cut."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bench.peers import _marginal_rate
from bench.support import parse_sizes, synthetic_jpeg


def test_sizes_parse_single_square_and_mix() -> None:
    assert parse_sizes("256") == [(256, 256)]
    assert parse_sizes("500x375, 256") == [(500, 375), (256, 256)]


@pytest.mark.parametrize("text", ["", "abc", "500x", "8x8", "500x375,x"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="image sizes"):
        parse_sizes(text)


def test_synthetic_photo_is_a_quality_jpeg_of_the_asked_size() -> None:
    data = synthetic_jpeg((500, 375), seed=3)
    img = Image.open(io.BytesIO(data))
    assert (img.format, img.size, img.mode) == ("JPEG", (500, 375), "RGB")
    assert synthetic_jpeg((500, 375), seed=3) == data  # deterministic: both systems read the same files
    assert synthetic_jpeg((500, 375), seed=4) != data


def test_marginal_rate_takes_the_fixed_start_up_cost_out() -> None:
    calls: list[int] = []

    def run(paths: list[str]) -> tuple[int, float]:  # 5 s of start-up, then 100 images/s
        calls.append(len(paths))
        return len(paths), 5.0 + len(paths) / 100

    out = _marginal_rate(run, [f"{i}.jpg" for i in range(1016)], batch_size=16)
    assert calls == [16, 254, 1016]  # warm-up, a quarter, the whole run
    assert out["images_per_s"] == pytest.approx(100.0)
    assert out["short_run_images"] == 254 and out["short_run_s"] == pytest.approx(7.54)
    assert out["images_per_s_whole_run"] == pytest.approx(1016 / 15.16, rel=1e-3)
