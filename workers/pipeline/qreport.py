"""Quantization report: what low precision costs, measured on the worker that calibrated.

For each precision (INT8, and bf16 on CPU / FP16 on TensorRT where the node serves them) the
outputs on the evaluation images are compared with FP32: top-1 agreement, mean and max absolute
difference of the raw outputs, accuracy and accuracy drop when labels are known, and throughput
(images/s) of each predictor on this worker. A drop above ``threshold_pt`` percentage points is
flagged with the advice of Paddle's low-precision guide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

ADVICE = ("accuracy drop {drop:.2f} pt exceeds {limit:.2f} pt: try another --algo (KL, hist, avg, mse, "
          "abs_max), more or more representative calibration images, or quantization-aware training "
          "(PaddleSlim QAT) and register the result with `trtbatch models add --quantized`")


def label_indices(labels: list[str | None], class_labels: tuple[str, ...]) -> np.ndarray | None:
    """Class index per eval image (-1 where unknown); None when no image has a label."""
    if not any(lbl is not None for lbl in labels):
        return None
    lookup = {name: i for i, name in enumerate(class_labels)}
    out = []
    for lbl in labels:
        if lbl is None:
            out.append(-1)
        elif lbl in lookup:
            out.append(lookup[lbl])
        else:
            out.append(int(lbl) if lbl.lstrip("-").isdigit() else -1)
    return np.asarray(out)


def accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    known = labels >= 0
    if not known.any():
        return None
    return float((outputs.reshape(len(outputs), -1).argmax(1)[known] == labels[known]).mean())


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    got = other.reshape(len(other), -1).astype(np.float64)
    diff = np.abs(ref - got)
    return {"top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
            "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}


def measure(run: Callable[[np.ndarray], np.ndarray], arrays: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Outputs over all arrays and images/s (one warm-up batch first, then a timed pass)."""
    run(arrays[:batch_size])
    outs = []
    started = time.perf_counter()
    for start in range(0, len(arrays), batch_size):
        outs.append(run(arrays[start:start + batch_size]))
    elapsed = time.perf_counter() - started
    return np.concatenate(outs), len(arrays) / max(elapsed, 1e-9)


def build_report(results: dict[str, tuple[np.ndarray, float]], labels: np.ndarray | None,
                 threshold_pt: float) -> dict[str, Any]:
    """``results``: precision -> (outputs, images/s); must contain fp32."""
    ref, _ = results["fp32"]
    ref_acc = accuracy(ref, labels)
    rows, flags = [], []
    for precision, (outs, rate) in results.items():
        row: dict[str, Any] = {"precision": precision, "images_per_s": round(rate, 2)}
        row.update(compare(ref, outs))
        acc = accuracy(outs, labels)
        if acc is not None:
            row["accuracy"] = acc
            row["accuracy_drop_pt"] = round((ref_acc - acc) * 100, 4) if ref_acc is not None else None
            if precision != "fp32" and row["accuracy_drop_pt"] is not None \
                    and row["accuracy_drop_pt"] > threshold_pt:
                flags.append(f"{precision}: " + ADVICE.format(drop=row["accuracy_drop_pt"], limit=threshold_pt))
        elif precision != "fp32" and row["top1_agreement"] < 1 - threshold_pt / 100:
            flags.append(f"{precision}: top-1 agreement {row['top1_agreement'] * 100:.2f}% with FP32 (no labels); "
                         + ADVICE.format(drop=(1 - row["top1_agreement"]) * 100, limit=threshold_pt))
        rows.append(row)
    return {"precisions": rows, "flags": flags, "threshold_pt": threshold_pt,
            "labelled_images": int((labels >= 0).sum()) if labels is not None else 0}
