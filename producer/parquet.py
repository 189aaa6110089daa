"""Parquet export of a job's results: one row per image, real column types, written in row groups.

Records arrive from ``JobStore.iter_results`` (read from Redis a chunk at a time) and leave in row
groups of ``ROWS_PER_GROUP``, so exporting a job of a million images holds one group in memory, not
the job. pyarrow is an optional dependency (``pip install 'trtbatch[parquet]'``): nothing here imports
it until a Parquet export runs.

Columns are those of the CSV export (``producer.export.CSV_COLUMNS``) with types instead of text:
``index`` int64, ``ok`` bool, ``top1_score`` double, absent values null (CSV writes ""), and

* ``top_k``: list<struct<label: string, index: int32, score: double>>, best first;
* ``outputs``: map<string, list<double>>, the raw outputs of a ``--raw-outputs`` job (null otherwise),
  each flattened row-major; an output the worker summarised instead of storing (over
  ``workers.pipeline.postprocess.MAX_RAW_VALUES`` values: shape, mean, max) is a null entry;
* ``notes``: list<string>, what the worker converted (CMYK, EXIF rotation, ...); ``batch_no`` int64.

Scores are doubles, not floats: the worker computes the softmax in float64, so the Parquet values equal
the JSONL ones exactly. The job record (model, version, precision, options) rides along as JSON in the
file's key-value metadata under ``trtbatch.job``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from common.errors import InputError
from common.schemas import JobRecord, ResultRecord

ROWS_PER_GROUP = 10_000
INSTALL_HINT = "pip install 'trtbatch[parquet]'"
_TEXT_COLUMNS = ("model", "version_id", "precision", "engine", "backend", "worker", "device")


def require() -> tuple[ModuleType, ModuleType]:
    """(pyarrow, pyarrow.parquet), or an InputError that says how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise InputError(f"Parquet export needs pyarrow, which is not installed: {INSTALL_HINT}") from exc
    return pyarrow, pyarrow.parquet


def schema(pa: ModuleType, job: JobRecord | None = None) -> Any:
    top = pa.struct([("label", pa.string()), ("index", pa.int32()), ("score", pa.float64())])
    columns = [("index", pa.int64()), ("path", pa.string()), ("ok", pa.bool_()), ("error", pa.string()),
               ("error_code", pa.string()), ("label", pa.string()), ("top1_label", pa.string()),
               ("top1_score", pa.float64()), ("top_k", pa.list_(top)),
               *((name, pa.string()) for name in _TEXT_COLUMNS),
               ("batch_no", pa.int64()), ("notes", pa.list_(pa.string())),
               ("outputs", pa.map_(pa.string(), pa.list_(pa.float64())))]
    meta = {"trtbatch.job": json.dumps(job.as_dict(), default=str)} if job else None
    return pa.schema(columns, metadata=meta)


def _flat(value: Any) -> list[float] | None:
    """An output's values flattened row-major; None for a summary (a dict) the worker stored instead."""
    if not isinstance(value, list):
        return None
    return np.asarray(value, dtype=np.float64).ravel().tolist()


def row(rec: ResultRecord) -> dict[str, Any]:
    top = rec.top_k[0] if rec.top_k else {}
    out: dict[str, Any] = {
        "index": rec.index, "path": rec.path, "ok": rec.ok, "error": rec.error, "error_code": rec.error_code,
        "label": rec.label, "top1_label": top.get("label"), "top1_score": top.get("score"),
        "top_k": [{"label": t.get("label"), "index": t.get("index"), "score": t.get("score")} for t in rec.top_k]
        if rec.top_k else None,
        "batch_no": rec.batch_no, "notes": rec.notes,
        "outputs": [(name, _flat(v)) for name, v in rec.outputs.items()] if rec.outputs else None}
    for name in _TEXT_COLUMNS:
        out[name] = getattr(rec, name) or None
    return out


def _groups(records: Iterable[ResultRecord], size: int) -> Iterator[list[ResultRecord]]:
    it = iter(records)
    while group := list(itertools.islice(it, size)):
        yield group


def write(records: Iterable[ResultRecord], path: str | Path, job: JobRecord | None = None,
          rows_per_group: int = ROWS_PER_GROUP) -> int:
    """Write ``records`` to a Parquet file at ``path``, ``rows_per_group`` rows per row group; returns the
    number of rows. A job with no records still gets a valid file (the schema, no row group)."""
    pa, pq = require()
    sch = schema(pa, job)
    n = 0
    with pq.ParquetWriter(str(path), sch) as writer:
        for group in _groups(records, rows_per_group):
            writer.write_table(pa.Table.from_pylist([row(r) for r in group], schema=sch),
                               row_group_size=rows_per_group)
            n += len(group)
    return n
