"""Which GPU decoder a batch decodes with: a slot's own, or one of a pool that thread slots share.

Process slots (one slot per process) have one decoder each. Thread slots share a pool of
``settings.gpu_decoders`` per process and preprocessing (at most one per slot): a batch takes
whichever decoder is free, only for its GPU part (routing and the Pillow-path images need none), so
several batches decode at once while another infers. The pool's decoders split the worker's CPU
threads between them (nvImageCodec's own threads, the hybrid backend's Huffman stage).

Why a pool of two: one decoder serialises the slots' batches behind its 12.7 ms decode beside
inference (hybrid backend, H200, ResNet50 FP16 batch 128). End to end with 4 thread slots: 1 decoder
6,405 img/s, 2: 6,796, 3: 6,048 - more decoders split the CPU threads and the GPU further
(docs/gpu-verification.md, night section).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from common.imaging import Preprocessor
from common.schemas import PayloadItem
from workers.engines.base import Predictor
from workers.pipeline.context import SlotContext

if TYPE_CHECKING:
    from workers.pipeline.gpu_decode import CpuDecode

log = logging.getLogger("trtbatch.pipeline")

_PROCESS_DECODERS: dict[Any, Any] = {}  # thread slots: a pool per process and preprocessing
_PROCESS_DECODERS_LOCK = threading.Lock()


class DecoderPool:
    """GPU decoders for one preprocessing; a batch's GPU part takes whichever is free."""

    def __init__(self, decoders: list[Any]) -> None:
        if not decoders:
            raise ValueError("a decoder pool needs at least one decoder")
        self.decoders = decoders
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for decoder in decoders:
            self._free.put(decoder)

    def __len__(self) -> int:
        return len(self.decoders)

    @contextlib.contextmanager
    def _take(self) -> Iterator[Any]:
        decoder = self._free.get()  # blocks while every decoder is decoding another batch
        try:
            with decoder.held() as held:
                yield held
        finally:
            self._free.put(decoder)

    def decode(self, items: list[PayloadItem], cpu_decode: CpuDecode) -> Any:
        """``GpuDecoder.decode`` with the GPU part on the first free decoder."""
        return self.decoders[0].decode_with(items, cpu_decode, self._take)

    def warm(self) -> float:
        """Warm every decoder (see ``GpuDecoder.warm``); seconds taken in all."""
        return sum(decoder.warm() for decoder in self.decoders)

    def close(self) -> None:
        """Close every decoder (each waits for the batch it is decoding)."""
        for decoder in self.decoders:
            decoder.close()


def gpu_decoder(ctx: SlotContext, pre: Preprocessor, predictor: Predictor) -> DecoderPool | None:
    """The decoders for the model's preprocessing, when the worker decodes on the GPU and the
    predictor takes device batches; else None (the Pillow path). Made once, by the first batch or
    the warm-up; a pool that could not start is remembered as False and the slot decodes with Pillow."""
    if not (ctx.identity.gpu_decode and predictor.accepts_device_input):
        return None
    from workers.pipeline.gpu_route import GPU, preprocess_route

    if preprocess_route(pre.pre) != GPU:  # every image of this model goes the Pillow path anyway
        return None
    key = (pre.pre, pre.chw, pre.max_pixels, pre.strict_modes)
    pooled = ctx.identity.gpu_decoder_pool
    cache = _PROCESS_DECODERS if pooled else ctx.gpu_decoders
    with _PROCESS_DECODERS_LOCK:
        found = cache.get(key)
        if found is None:
            found = new_pool(ctx, pre, predictor, pooled or 1, pooled or ctx.identity.slots)
            cache[key] = found
    return found or None


def new_pool(ctx: SlotContext, pre: Preprocessor, predictor: Predictor, size: int, sharing: int
             ) -> DecoderPool | bool:
    """``size`` decoders, each with the worker's CPU threads split ``sharing`` ways; fewer if the
    later ones cannot start (said in the slot's last error), False if none can."""
    from workers.pipeline.gpu_decode import GpuDecoder

    threads = max(1, ctx.identity.cpu_threads // sharing)
    made: list[Any] = []
    for _ in range(size):
        try:
            made.append(GpuDecoder(pre, predictor.spec.gpu_id, threads, ctx.settings.gpu_jpeg_backend))
        except Exception as exc:
            what = f"{type(exc).__name__}: {exc}"
            if not made:  # the slot decodes with Pillow, and says so
                log.error("GPU decoding is unavailable, decoding with Pillow: %s", what)
                ctx.publish_state(last_error=f"GPU decode unavailable: {what}"[:500])
                return False
            log.error("made %d of %d GPU decoders: %s", len(made), size, what)
            ctx.publish_state(last_error=f"GPU decoders: {len(made)} of {size} started: {what}"[:500])
            break
    return DecoderPool(made)


def close_decoders(cache: dict[Any, Any]) -> None:
    """Free a cache's GPU decoders now, while CUDA is up (at interpreter exit they crashed); False
    entries are decoders that could not start."""
    for decoder in cache.values():
        if decoder:
            decoder.close()
    cache.clear()


def close_process_decoders() -> None:
    """Free the decoders thread slots share (at worker shutdown)."""
    with _PROCESS_DECODERS_LOCK:
        close_decoders(_PROCESS_DECODERS)
