"""Predictor outputs -> per-image top-k labels or raw outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.manifest import Postprocess
from workers.pipeline import postprocess
from workers.pipeline.postprocess import MAX_RAW_VALUES, softmax, top_k

LABELS = Postprocess(kind="classify", softmax=True, top_k=3, labels=("cat", "dog", "bird", "fish"))


def test_softmax_values() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    out = softmax(logits)
    np.testing.assert_allclose(out[0], expected, rtol=1e-12)
    np.testing.assert_allclose(out[1], [1 / 3] * 3, rtol=1e-12)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-12)


def test_softmax_is_stable_for_huge_logits() -> None:
    out = softmax(np.array([[1000.0, 999.0, -1000.0], [-1e4, -1e4, -1e4]]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, :2], [1 / (1 + math.e**-1), math.e**-1 / (1 + math.e**-1)], rtol=1e-12)
    assert out[0, 2] == pytest.approx(0.0, abs=1e-300)
    np.testing.assert_allclose(out[1], [1 / 3] * 3)
    assert softmax(np.array([[1e308, 1e308]])).tolist() == [[0.5, 0.5]]


def test_top_k_best_first_with_labels() -> None:
    scores = np.array([[0.1, 0.6, 0.05, 0.25], [0.4, 0.1, 0.3, 0.2]])
    rows = top_k(scores, LABELS, 3)
    assert rows[0] == [{"label": "dog", "index": 1, "score": 0.6}, {"label": "fish", "index": 3, "score": 0.25},
                       {"label": "cat", "index": 0, "score": 0.1}]
    assert [r["index"] for r in rows[1]] == [0, 2, 3]
    assert all(isinstance(r["index"], int) and isinstance(r["score"], float) for r in rows[0])


def test_top_k_ties_keep_index_order() -> None:
    rows = top_k(np.array([[0.25, 0.25, 0.25, 0.25]]), LABELS, 4)
    assert [r["index"] for r in rows[0]] == sorted(r["index"] for r in rows[0])


def test_labels_fall_back_to_the_index() -> None:
    short = Postprocess(labels=("zero", "one"))
    rows = top_k(np.array([[0.1, 0.2, 0.7]]), short, 3)
    assert [r["label"] for r in rows[0]] == ["2", "one", "zero"]
    assert [r["label"] for r in top_k(np.array([[0.3, 0.7]]), Postprocess(), 2)[0]] == ["1", "0"]


def test_k_larger_than_the_number_of_classes() -> None:
    rows = top_k(np.array([[0.3, 0.7], [0.9, 0.1]]), LABELS, 10)
    assert [len(r) for r in rows] == [2, 2]
    assert [r["label"] for r in rows[1]] == ["cat", "dog"]


def test_classify_outputs() -> None:
    logits = np.array([[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    out = postprocess.postprocess({"logits": logits}, LABELS)
    assert len(out) == 2 and set(out[0]) == {"top_k"}
    assert len(out[0]["top_k"]) == 3  # the manifest's top_k
    assert out[0]["top_k"][0]["label"] == "dog"
    expected = softmax(logits.astype(np.float64))
    assert out[0]["top_k"][0]["score"] == pytest.approx(expected[0, 1])
    assert [t["label"] for t in postprocess.postprocess({"logits": logits}, LABELS, k=1)[1]["top_k"]] == ["cat"]


def test_classify_without_softmax_and_with_a_named_output() -> None:
    post = Postprocess(softmax=False, top_k=2, output="probs")
    outputs = {"features": np.zeros((1, 8), np.float32), "probs": np.array([[0.2, 0.5, 0.3]], np.float32)}
    (row,) = postprocess.postprocess(outputs, post)
    assert [(t["index"], round(t["score"], 6)) for t in row["top_k"]] == [(1, 0.5), (2, 0.3)]


def test_classify_flattens_extra_dimensions() -> None:
    logits = np.arange(8, dtype=np.float32).reshape(2, 4, 1, 1)  # e.g. an NCHW 1x1 head
    out = postprocess.postprocess({"y": logits}, Postprocess(top_k=1))
    assert [r["top_k"][0]["index"] for r in out] == [3, 3]


def test_raw_outputs() -> None:
    post = Postprocess(kind="raw")
    small = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = postprocess.postprocess({"emb": small, "score": np.array([[0.5], [1.5]], np.float32)}, post)
    assert out == [{"outputs": {"emb": [0.0, 1.0, 2.0], "score": [0.5]}},
                   {"outputs": {"emb": [3.0, 4.0, 5.0], "score": [1.5]}}]


def test_big_raw_outputs_are_summarised() -> None:
    post = Postprocess(kind="raw")
    big = np.zeros((2, 2, MAX_RAW_VALUES), np.float32)
    big[1, 0, 0] = 8.0
    exact = np.ones((2, MAX_RAW_VALUES), np.float32)
    out = postprocess.postprocess({"map": big, "exact": exact}, post)
    assert out[1]["outputs"]["map"] == {"shape": [2, MAX_RAW_VALUES], "mean": pytest.approx(8.0 / (2 * MAX_RAW_VALUES)),
                                        "max": 8.0}
    assert out[0]["outputs"]["map"]["max"] == 0.0
    assert out[0]["outputs"]["exact"] == [1.0] * MAX_RAW_VALUES  # exactly at the limit: kept


def test_softmax_top_k_gives_the_scores_and_order_of_softmax_then_top_k() -> None:
    """The fused path normalises only the picked scores: the same values (bit for bit) and order as
    softmax over every class first, on logits like a 1000-class model's, with ties by index."""
    from workers.pipeline.postprocess import softmax_top_k

    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((64, 1000)) * 4).astype(np.float32)
    logits[3, [10, 20, 30]] = 50.0  # a three-way tie at the top
    fused = softmax_top_k(logits, LABELS, 5)
    plain = top_k(softmax(logits.astype(np.float64)), LABELS, 5)
    assert fused == plain
    assert [r["index"] for r in fused[3][:3]] == [10, 20, 30]
    assert softmax_top_k(logits[:2, :3], LABELS, 10) == top_k(softmax(logits[:2, :3].astype(np.float64)), LABELS, 10)


def test_ties_across_the_kth_place_keep_the_lower_indices_and_nan_ranks_last() -> None:
    """Equal scores straddling the k-th place (constant or quantised outputs): the lowest indices are
    kept, best first; a NaN score never takes a place a number could have."""
    rows = top_k(np.array([[0.1] * 10, [0.0, 0.5, 0.5, 0.5, 0.2, 0.5, 0.0, 0.0, 0.0, 0.0]]), LABELS, 3)
    assert [r["index"] for r in rows[0]] == [0, 1, 2]
    assert [r["index"] for r in rows[1]] == [1, 2, 3]
    with_nan = top_k(np.array([[0.5, np.nan, 0.9, 0.1, 0.7]]), LABELS, 2)
    assert [(r["index"], r["score"]) for r in with_nan[0]] == [(2, 0.9), (4, 0.7)]
    assert [r["index"] for r in top_k(np.array([[np.nan, 0.3]]), LABELS, 2)[0]] == [1, 0]  # k = every class
