"""The conversion check: what is published, what is refused, and the report either way."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConversionError
from workers.engines.onnx_convert import TOLERANCES, check

REF = np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32) * 4


def test_a_faithful_conversion_passes_with_its_numbers() -> None:
    got = REF * (1 + 1e-7)
    report = check("fp32", REF, got)
    assert report["variant"] == "fp32" and report["samples"] == 16 and report["top1_agreement"] == 1.0
    assert 0 < report["rel_l2"] < 1e-6 and report["tolerance"] == {"rel_l2": 1e-4, "top1_agreement": 1.0}


@pytest.mark.parametrize(("variant", "noise"), [("fp32", 1e-3), ("fp16", 5e-2), ("qdq", 0.5)])
def test_past_the_tolerance_nothing_is_published(variant: str, noise: float) -> None:
    got = REF + noise * np.abs(REF).mean() * np.random.default_rng(1).standard_normal(REF.shape)
    with pytest.raises(ConversionError, match=rf"the {variant} ONNX form does not match the source: relative L2"):
        check(variant, REF, got)


def test_top1_gates_fp32_and_qdq_but_not_fp16() -> None:
    flipped = REF.copy()
    flipped[0] = REF[0][::-1]  # one image's classes reordered
    tiny = REF * 0.99999  # and nothing else changes
    assert TOLERANCES["fp16"].top1 is None
    with pytest.raises(ConversionError, match="top-1 agreement"):
        check("fp32", REF, np.where(np.arange(16)[:, None] == 0, flipped, tiny))


def test_shape_mismatch_and_nan_are_refused() -> None:
    with pytest.raises(ConversionError, match="has shape"):
        check("fp32", REF, REF[:, :5])
    with pytest.raises(ConversionError):
        check("fp16", REF, np.full_like(REF, np.nan))
