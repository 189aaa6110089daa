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


def test_thread_slots_share_one_gpu_decoder_unless_told_to_take_one_each(monkeypatch) -> None:
    """gpu_decoder_per: process (the default) -> the thread slots of a process take turns with one
    decoder; slot -> one each; the CPU threads of each decoder are split accordingly."""
    import argparse
    from types import SimpleNamespace

    from common.config import Settings
    from common.errors import ConfigError
    from common.imaging import Preprocessor
    from workers.pipeline import batch
    from workers.process.main import build_identity

    made: list[int] = []

    def new(ctx, pre, predictor, sharing):  # what the CPU threads of each decoder are split by
        made.append(sharing)
        return object()
    monkeypatch.setattr(batch, "_new_gpu_decoder", new)
    monkeypatch.setattr(batch, "_PROCESS_DECODERS", {})
    pre = Preprocessor(Preprocess(), (3, 224, 224), LIMIT)
    predictor = SimpleNamespace(accepts_device_input=True)

    def slots(shared: bool) -> list:
        ident = SimpleNamespace(gpu_decode=True, shared_gpu_decoder=shared, slots=4, thread_slots=True)
        return [batch.gpu_decoder(SimpleNamespace(identity=ident, gpu_decoders={}), pre, predictor)
                for _ in range(4)]
    own = slots(False)
    assert len({id(d) for d in own}) == 4 and made == [4] * 4
    made.clear()
    shared = slots(True)
    assert len({id(d) for d in shared}) == 1 and made == [1]
    args = argparse.Namespace(device="cpu", gpu_index=0, name="x", threads=1, decode_threads=0, slots=1,
                              queues=None, warm=None)
    with pytest.raises(ConfigError, match="gpu_decoder_per must be slot or process"):
        build_identity(Settings.from_env({"TRTBATCH_GPU_DECODER_PER": "gpu"}), args)
    with pytest.raises(ConfigError, match="gpu_jpeg_backend must be hybrid or hardware"):
        build_identity(Settings.from_env({"TRTBATCH_GPU_JPEG_BACKEND": "nvjpg"}), args)
    ident = build_identity(Settings.from_env({"TRTBATCH_SLOT_POOL": "threads"}), args)
    assert ident.shared_gpu_decoder and ident.thread_slots
    own = Settings.from_env({"TRTBATCH_SLOT_POOL": "threads", "TRTBATCH_GPU_DECODER_PER": "slot"})
    assert not build_identity(own, args).shared_gpu_decoder
    assert not build_identity(Settings.from_env({}), args).shared_gpu_decoder  # process slots: one each


def test_gpu_decoders_are_closed_at_shutdown(monkeypatch) -> None:
    """A slot's own decoders and the ones thread slots share are closed (nvImageCodec freed while CUDA
    is up) before the predictors go; a slot whose decoder could not start (False) is skipped."""
    from types import SimpleNamespace

    from workers.pipeline import batch
    from workers.process import runtime

    order: list[str] = []

    def decoder(name: str) -> SimpleNamespace:
        return SimpleNamespace(close=lambda: order.append(name))
    monkeypatch.setattr(batch, "_PROCESS_DECODERS", {"k": decoder("shared")})
    batch.close_process_decoders()
    assert order == ["shared"] and batch._PROCESS_DECODERS == {}
    ctx = SimpleNamespace(gpu_decoders={"a": decoder("own"), "b": False},
                          predictors=SimpleNamespace(close=lambda: order.append("predictors")),
                          pool=SimpleNamespace(shutdown=lambda **_: order.append("pool")))
    runtime._close(ctx)
    assert order == ["shared", "own", "predictors", "pool"] and ctx.gpu_decoders == {}
