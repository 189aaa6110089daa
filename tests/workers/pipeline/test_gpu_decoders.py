"""Which GPU decoder a batch gets: thread slots share a pool per process, process slots have their
own; a batch takes a free decoder of the pool; decoders are closed at shutdown. nvImageCodec needs a
GPU, so the decoders here are stand-ins that record what they were given - the pool, cache and
settings logic around them is the worker's own."""

from __future__ import annotations

import argparse
import contextlib
import threading
from types import SimpleNamespace

import pytest

from common.config import Settings
from common.errors import ConfigError
from common.imaging import Preprocessor
from common.manifest import Preprocess
from workers.pipeline import gpu_decode, gpu_decoders
from workers.pipeline.gpu_decoders import DecoderPool, close_process_decoders, gpu_decoder
from workers.process.main import build_identity

LIMIT = 50_000_000
PRE = Preprocessor(Preprocess(), (3, 224, 224), LIMIT)
PREDICTOR = SimpleNamespace(accepts_device_input=True, spec=SimpleNamespace(gpu_id=0))


class StandIn:
    """Records the CPU threads it was given; ``decode_with`` takes a decoder as GpuDecoder's does."""

    made: list[StandIn] = []
    fail_after: int | None = None

    def __init__(self, pre: Preprocessor, device_id: int, cpu_threads: int, backend: str) -> None:
        if StandIn.fail_after is not None and len(StandIn.made) >= StandIn.fail_after:
            raise RuntimeError("out of device memory")
        self.threads, self.backend, self.closed = cpu_threads, backend, False
        StandIn.made.append(self)

    @contextlib.contextmanager
    def held(self):
        yield self

    def decode_with(self, items, cpu_decode, take):
        with take() as decoder:
            return cpu_decode(decoder)

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def stand_in(monkeypatch) -> type[StandIn]:
    StandIn.made, StandIn.fail_after = [], None
    monkeypatch.setattr(gpu_decode, "GpuDecoder", StandIn)
    monkeypatch.setattr(gpu_decoders, "_PROCESS_DECODERS", {})
    return StandIn


def slot_ctx(pool: int, slots: int = 4, errors: list | None = None) -> SimpleNamespace:
    ident = SimpleNamespace(gpu_decode=True, gpu_decoder_pool=pool, slots=slots, cpu_threads=16)
    return SimpleNamespace(identity=ident, gpu_decoders={}, settings=Settings.from_env({}),
                           publish_state=lambda **state: (errors if errors is not None else []).append(state))


def test_thread_slots_share_one_pool_and_process_slots_have_their_own(stand_in) -> None:
    """Pool of 3 for 4 thread slots: one pool, 3 decoders of 16 // 3 threads; process slots (pool 0):
    a decoder each, with 16 // slots threads."""
    shared = [gpu_decoder(slot_ctx(3), PRE, PREDICTOR) for _ in range(4)]
    assert len({id(p) for p in shared}) == 1 and len(shared[0]) == 3
    assert [d.threads for d in stand_in.made] == [5, 5, 5] and {d.backend for d in stand_in.made} == {"hybrid"}
    stand_in.made.clear()
    own = [gpu_decoder(slot_ctx(0), PRE, PREDICTOR) for _ in range(4)]
    assert len({id(p) for p in own}) == 4 and all(len(p) == 1 for p in own)
    assert [d.threads for d in stand_in.made] == [4] * 4


def test_no_decoder_where_the_gpu_path_cannot_serve(stand_in) -> None:
    host_only = SimpleNamespace(accepts_device_input=False, spec=PREDICTOR.spec)
    assert gpu_decoder(slot_ctx(2), PRE, host_only) is None
    padded = Preprocessor(Preprocess(fit="pad"), (3, 224, 224), LIMIT)
    assert gpu_decoder(slot_ctx(2), padded, PREDICTOR) is None
    ctx = slot_ctx(2)
    ctx.identity.gpu_decode = False
    assert gpu_decoder(ctx, PRE, PREDICTOR) is None and stand_in.made == []


@contextlib.contextmanager
def two_batches_decoding(pool: DecoderPool):
    """Two batches decoding at once, each holding a decoder until the block ends; yields the decoders
    they hold."""
    inside, release = threading.Barrier(3), threading.Event()
    got: list[StandIn] = []

    def busy(decoder: StandIn) -> StandIn:
        got.append(decoder)
        inside.wait(5)
        release.wait(5)
        return decoder
    threads = [threading.Thread(target=pool.decode, args=([], busy), daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(5)  # both batches are inside their decode
    try:
        yield got
    finally:
        release.set()
        for t in threads:
            t.join(5)


def test_a_batch_takes_a_free_decoder_and_waits_while_all_are_busy(stand_in) -> None:
    pool = DecoderPool([StandIn(PRE, 0, 1, "hybrid"), StandIn(PRE, 0, 1, "hybrid")])
    third: list[StandIn] = []
    waiter = threading.Thread(target=lambda: third.append(pool.decode([], lambda d: d)))
    with two_batches_decoding(pool) as got:
        assert len({id(d) for d in got}) == 2  # at once, on different decoders
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and third == []  # no decoder free: the third batch waits
    waiter.join(5)
    assert third and third[0] in got


def test_a_decoder_whose_batch_failed_goes_back_to_the_pool(stand_in) -> None:
    pool = DecoderPool([StandIn(PRE, 0, 1, "hybrid"), StandIn(PRE, 0, 1, "hybrid")])

    def fails(decoder: StandIn) -> None:
        raise RuntimeError("nvImageCodec: decode failed")
    for _ in range(2):  # as many as there are decoders: one kept by a failure would block the next step
        with pytest.raises(RuntimeError, match="decode failed"):
            pool.decode([], fails)
    with two_batches_decoding(pool) as got:  # both decoders were free again: two batches hold one each
        assert len({id(d) for d in got}) == 2


def test_a_pool_that_cannot_start_fully_serves_with_fewer_and_says_so(stand_in) -> None:
    errors: list[dict] = []
    stand_in.fail_after = 2
    pool = gpu_decoder(slot_ctx(3, errors=errors), PRE, PREDICTOR)
    assert len(pool) == 2
    assert "GPU decoders: 2 of 3 started: RuntimeError: out of device memory" in errors[0]["last_error"]


def test_a_decoder_that_cannot_start_leaves_the_slot_on_pillow_once(stand_in) -> None:
    errors: list[dict] = []
    stand_in.fail_after = 0
    ctx = slot_ctx(0, errors=errors)
    assert gpu_decoder(ctx, PRE, PREDICTOR) is None
    assert gpu_decoder(ctx, PRE, PREDICTOR) is None  # remembered: not tried again per batch
    assert len(errors) == 1 and errors[0]["last_error"].startswith("GPU decode unavailable: RuntimeError")


def test_decoder_settings_are_checked_and_capped_at_the_slots() -> None:
    args = argparse.Namespace(device="cpu", gpu_index=0, name="x", threads=1, decode_threads=0, slots=4,
                              queues=None, warm=None)
    with pytest.raises(ConfigError, match="gpu_decoders must be 1 or more, got 0"):
        build_identity(Settings.from_env({"TRTBATCH_GPU_DECODERS": "0"}), args)
    with pytest.raises(ConfigError, match="prefetch_multiplier must be 1 or more, got 0"):
        build_identity(Settings.from_env({"TRTBATCH_PREFETCH_MULTIPLIER": "0"}), args)
    with pytest.raises(ConfigError, match=r"gil_switch_interval_ms must be above 0 and below 1000, got 0\.0"):
        build_identity(Settings.from_env({"TRTBATCH_GIL_SWITCH_INTERVAL_MS": "0"}), args)
    with pytest.raises(ConfigError, match="gil_switch_interval_ms must be above 0 and below 1000, got nan"):
        build_identity(Settings.from_env({"TRTBATCH_GIL_SWITCH_INTERVAL_MS": "nan"}), args)
    with pytest.raises(ConfigError, match="gpu_jpeg_backend must be hybrid or hardware"):
        build_identity(Settings.from_env({"TRTBATCH_GPU_JPEG_BACKEND": "nvjpg"}), args)
    threads = {"TRTBATCH_SLOT_POOL": "threads"}
    assert build_identity(Settings.from_env(threads), args).gpu_decoder_pool == 2  # the default
    many = build_identity(Settings.from_env({**threads, "TRTBATCH_GPU_DECODERS": "9"}), args)
    assert many.gpu_decoder_pool == 4 and many.thread_slots
    assert build_identity(Settings.from_env({}), args).gpu_decoder_pool == 0  # process slots: their own


def test_thread_slots_hand_the_gil_over_every_switch_interval() -> None:
    import sys

    from workers.process.main import share_gil

    args = argparse.Namespace(device="cpu", gpu_index=0, name="x", threads=1, decode_threads=0, slots=2,
                              queues=None, warm=None)
    before = sys.getswitchinterval()
    try:
        share_gil(Settings.from_env({}), build_identity(Settings.from_env({}), args))
        assert sys.getswitchinterval() == before  # process slots: Python's own
        threads = Settings.from_env({"TRTBATCH_SLOT_POOL": "threads", "TRTBATCH_GIL_SWITCH_INTERVAL_MS": "0.5"})
        share_gil(threads, build_identity(threads, args))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_gpu_decoders_are_closed_at_shutdown(stand_in) -> None:
    """The pool thread slots share and a slot's own decoders are closed (nvImageCodec freed while CUDA
    is up) before the predictors go; a slot whose decoder could not start (False) is skipped."""
    from workers.process import runtime

    order: list[str] = []

    def closing(name: str) -> SimpleNamespace:
        return SimpleNamespace(close=lambda: order.append(name))
    shared = gpu_decoder(slot_ctx(2), PRE, PREDICTOR)
    close_process_decoders()
    assert all(d.closed for d in shared.decoders) and gpu_decoders._PROCESS_DECODERS == {}
    ctx = SimpleNamespace(gpu_decoders={"a": closing("own"), "b": False},
                          predictors=SimpleNamespace(close=lambda: order.append("predictors")),
                          pool=SimpleNamespace(shutdown=lambda **_: order.append("pool")))
    runtime._close(ctx)
    assert order == ["own", "predictors", "pool"] and ctx.gpu_decoders == {}
