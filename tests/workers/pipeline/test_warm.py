"""Warm start of one slot (workers/process/warm.py) on a real Paddle predictor: the report, and a GPU
decoder's warm-up beside it - its time when it works, its error (and the predictor's figures kept)
when it does not."""

from __future__ import annotations

import pytest

from workers.pipeline.context import SlotContext
from workers.process import warm


class _Decoder:
    def __init__(self, error: Exception | None) -> None:
        self.error, self.calls = error, 0

    def warm(self) -> float:
        self.calls += 1
        if self.error:
            raise self.error
        return 0.25


def test_a_cpu_slot_warms_its_predictor_and_has_no_gpu_decoder(slot: SlotContext, digits_version: str) -> None:
    item = warm.warm_one(slot, warm.WarmRequest.parse("digits:fp32:8"))
    assert item["model"] == "digits" and item["batch"] == 8 and item["build_s"] >= 0 and item["warm_s"] >= 0
    assert "gpu_decoder_warm_s" not in item and "gpu_decoder_error" not in item


@pytest.mark.parametrize("error", [None, RuntimeError("the GPU decoder did not decode its warm-up JPEG")])
def test_a_gpu_decoder_is_warmed_with_the_predictor_and_its_failure_is_reported(
        slot: SlotContext, digits_version: str, monkeypatch, error: Exception | None) -> None:
    decoder = _Decoder(error)
    monkeypatch.setattr(warm, "gpu_decoder", lambda ctx, pre, predictor: decoder)
    item = warm.warm_one(slot, warm.WarmRequest.parse("digits:fp32:8"))
    assert decoder.calls == 1 and item["warm_s"] >= 0  # the predictor's own figures stay
    if error is None:
        assert item["gpu_decoder_warm_s"] == 0.25
    else:
        assert "did not decode its warm-up JPEG" in item["gpu_decoder_error"]
        assert "GPU decoder warm-up" in (slot.state.last_error or "")
