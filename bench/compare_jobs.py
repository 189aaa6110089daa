#!/usr/bin/env python3
"""Compare the results of two jobs on the same images, image by image (matched by path).

    python3 bench/compare_jobs.py TEST_JOB REFERENCE_JOB          # both in this Redis
    python3 bench/compare_jobs.py TEST_JOB --reference-file ref.jsonl   # `trtbatch results` of another fleet

Prints one JSON line: images compared, top-1 agreement, the relative L2 difference of the raw outputs
(when both jobs kept them: ``submit --raw-outputs``) over all images and the worst image, and the
accuracy of each job against the images' labels (a labelled manifest). Used for GPU vs CPU checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import emit_json_line
from common.config import Settings
from producer.client import Client


def _rows_of_job(client: Client, job_id: str) -> Iterator[dict[str, Any]]:
    for rec in client.store.iter_results(job_id):
        yield rec.as_row()


def _rows_of_file(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _key(row: dict[str, Any]) -> str:
    return Path(row["path"]).name


def _vector(row: dict[str, Any]) -> np.ndarray | None:
    outputs = row.get("outputs")
    if not outputs:
        return None
    return np.concatenate([np.asarray(v, np.float64).ravel() for _, v in sorted(outputs.items())])


def _top1(row: dict[str, Any]) -> str | None:
    return row["top_k"][0]["label"] if row.get("ok") and row.get("top_k") else None


def compare(test: dict[str, dict[str, Any]], ref: dict[str, dict[str, Any]]) -> dict[str, Any]:
    common = sorted(set(test) & set(ref))
    agree = labelled = hits_test = hits_ref = 0
    num = den = 0.0
    worst = 0.0
    with_outputs = 0
    for name in common:
        a, b = test[name], ref[name]
        agree += int(_top1(a) is not None and _top1(a) == _top1(b))
        if a.get("label") is not None:
            labelled += 1
            hits_test += int(_top1(a) == a["label"])
            hits_ref += int(_top1(b) == a["label"])
        va, vb = _vector(a), _vector(b)
        if va is not None and vb is not None and va.shape == vb.shape:
            with_outputs += 1
            d, r = float(np.sum((va - vb) ** 2)), float(np.sum(vb ** 2))
            num, den = num + d, den + r
            worst = max(worst, (d / r) ** 0.5 if r else 0.0)
    out: dict[str, Any] = {"compared": len(common), "only_in_test": len(set(test) - set(ref)),
                           "only_in_reference": len(set(ref) - set(test)),
                           "top1_agreement": round(agree / len(common), 6) if common else None}
    if with_outputs:
        out.update(raw_outputs_compared=with_outputs, rel_l2=float(f"{(num / den) ** 0.5:.3g}"),
                   rel_l2_worst_image=float(f"{worst:.3g}"))
    if labelled:
        out.update(labelled=labelled, accuracy_test=round(hits_test / labelled, 6),
                   accuracy_reference=round(hits_ref / labelled, 6))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test_job")
    parser.add_argument("reference_job", nargs="?")
    parser.add_argument("--reference-file", type=Path, help="JSONL from `trtbatch results` of the reference job.")
    parser.add_argument("--label", default="", help="A name for this comparison in the output.")
    parser.add_argument("--output", type=Path, help="Also append the JSON line to this file.")
    args = parser.parse_args()
    if bool(args.reference_job) == bool(args.reference_file):
        parser.error("give a REFERENCE_JOB or --reference-file")
    client = Client(Settings.from_env())
    test = {_key(r): r for r in _rows_of_job(client, args.test_job)}
    rows = _rows_of_file(args.reference_file) if args.reference_file else _rows_of_job(client, args.reference_job)
    ref = {_key(r): r for r in rows}
    test_meta = client.store.record(args.test_job)
    result = {"comparison": args.label, "test_job": args.test_job,
              "test": f"{test_meta.engine} {test_meta.target} {test_meta.precision} ({test_meta.model})",
              "reference": args.reference_job or str(args.reference_file), **compare(test, ref)}
    emit_json_line(result, args.output)


if __name__ == "__main__":
    main()
