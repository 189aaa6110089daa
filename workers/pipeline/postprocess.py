"""Turn a batch of predictor outputs into per-image payloads: top-k labels or raw outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.manifest import Postprocess

#: Raw outputs larger than this many values per image are summarised, not stored.
MAX_RAW_VALUES = 4096


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def pick_output(outputs: dict[str, np.ndarray], post: Postprocess) -> np.ndarray:
    if post.output:
        return outputs[post.output]
    return next(iter(outputs.values()))


def top_k(scores: np.ndarray, post: Postprocess, k: int) -> list[list[dict[str, Any]]]:
    """Best-first ``{"label", "index", "score"}`` lists, one per row of ``scores`` [N, classes]."""
    k = min(k, scores.shape[-1])
    part = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
    picked = np.take_along_axis(scores, part, axis=-1)
    order = np.argsort(-picked, axis=-1, kind="stable")  # ties keep argpartition's order, as before
    # whole arrays to Python at once: per-element int()/float() cost more than the sort (GIL time
    # that thread slots share)
    indices = np.take_along_axis(part, order, axis=-1).tolist()
    values = np.take_along_axis(picked, order, axis=-1).tolist()
    label = post.label
    return [[{"label": label(i), "index": i, "score": s} for i, s in zip(idx, vals, strict=True)]
            for idx, vals in zip(indices, values, strict=True)]


def postprocess(outputs: dict[str, np.ndarray], post: Postprocess, k: int | None = None
                ) -> list[dict[str, Any]]:
    """One dict per image: ``{"top_k": [...]}`` for classifiers, ``{"outputs": {...}}`` for raw."""
    if post.kind == "classify":
        logits = pick_output(outputs, post).reshape(len(next(iter(outputs.values()))), -1)
        scores = softmax(logits.astype(np.float64)) if post.softmax else logits.astype(np.float64)
        return [{"top_k": row} for row in top_k(scores, post, k or post.top_k)]
    n = len(next(iter(outputs.values())))
    out: list[dict[str, Any]] = [{"outputs": {}} for _ in range(n)]
    for name, arr in outputs.items():
        for i in range(n):
            values = arr[i]
            if values.size <= MAX_RAW_VALUES:
                out[i]["outputs"][name] = values.astype(np.float64).tolist()
            else:
                out[i]["outputs"][name] = {"shape": list(values.shape), "mean": float(values.mean()),
                                           "max": float(values.max())}
    return out
