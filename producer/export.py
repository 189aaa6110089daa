"""Result export: a stream (JSONL, CSV) or one JSON file per image.

Export to a folder (``results --dir OUT``) writes one JSON file per image at
``OUT/<image path>.json``. Image paths come from users and manifests, so they are made safe first
(``safe_parts``): no written file can land outside OUT, whatever the path holds (``..``, an absolute
path, NUL or control bytes) and whatever OUT already holds (a symbolic link pointing out of it is
refused, never followed).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from common.errors import InputError
from common.schemas import ResultRecord
from producer.client import Client

EXPORT_FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("index", "path", "ok", "error", "error_code", "label", "top1_label", "top1_score",
               "top_k", "model", "version_id", "precision", "engine", "backend", "worker", "device")


def csv_row(rec: ResultRecord) -> dict[str, Any]:
    top = rec.top_k[0] if rec.top_k else {}
    return {"index": rec.index, "path": rec.path, "ok": rec.ok, "error": rec.error or "",
            "error_code": rec.error_code or "", "label": rec.label or "",
            "top1_label": top.get("label", ""), "top1_score": top.get("score", ""),
            "top_k": json.dumps(rec.top_k) if rec.top_k else "", "model": rec.model,
            "version_id": rec.version_id, "precision": rec.precision, "engine": rec.engine, "backend": rec.backend,
            "worker": rec.worker, "device": rec.device}


def export(client: Client, job_id: str, fmt: str, out: TextIO, failed_only: bool = False) -> int:
    """Write every result record of a job to ``out``; returns how many were written."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    client.store.meta(job_id)  # raises JobError for an unknown job
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if fmt == "csv" else None
    if writer:
        writer.writeheader()
    n = 0
    for rec in client.store.iter_results(job_id, failed_only=failed_only):
        if writer:
            writer.writerow(csv_row(rec))
        else:
            out.write(json.dumps(rec.as_row(), ensure_ascii=False) + "\n")
        n += 1
    return n


#: A file name may be 255 bytes; leave room for ``~<index>.json``.
MAX_COMPONENT_BYTES = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class DirExport:
    """What ``export_dir`` did: files written, records moved to another name, records refused."""

    root: Path
    written: int = 0
    renamed: list[tuple[int, str, str]] = field(default_factory=list)  # (index, image path, file written)
    refused: list[tuple[int, str, str]] = field(default_factory=list)  # (index, image path, reason)


class _Clash(Exception):
    """This name is taken (by another image of the export, or by something already in OUT)."""


class _Refused(Exception):
    """Writing here would leave OUT."""


def _component(part: str) -> str:
    """One path component as a valid, bounded file name: control bytes (NUL included) become ``_``,
    unencodable characters ``?``, and an over-long name is cut and tagged with a hash of the whole."""
    data = _CONTROL.sub("_", part).encode("utf-8", "replace")
    if len(data) <= MAX_COMPONENT_BYTES:
        return data.decode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:12]
    return data[:MAX_COMPONENT_BYTES - 13].decode("utf-8", "ignore") + "-" + digest


def safe_parts(path: str) -> list[str]:
    """An image path as relative components that cannot climb: leading ``/`` stripped, empty, ``.``
    and ``..`` components dropped, each component sanitized (``_component``)."""
    return [_component(p) for p in path.split("/") if p not in ("", ".", "..")]


def _candidates(parts: list[str], index: int) -> Iterator[tuple[str, ...]]:
    """Where image ``index`` may go, best first: its own name, the name tagged with the index, and
    that tagged name at the top of OUT (when a folder on its way is taken)."""
    parts = parts or [f"image-{index}"]
    yield (*parts[:-1], f"{parts[-1]}.json")
    yield (*parts[:-1], f"{parts[-1]}~{index}.json")
    yield (f"{parts[-1]}~{index}.json",)


def _inside(root: Path, path: str | Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == root or real.is_relative_to(root)


def _claim(rel: tuple[str, ...], files: set[tuple[str, ...]], dirs: set[tuple[str, ...]]) -> None:
    """Reserve ``rel`` as a file of this export, unless it or a folder on its way is already used."""
    if rel in files or rel in dirs or any(rel[:i] in files for i in range(1, len(rel))):
        raise _Clash(rel)


def _write_json(root: Path, rel: tuple[str, ...], text: str) -> Path:
    """Write ``text`` at ``root/rel`` atomically, through no symbolic link that leaves ``root``."""
    target = root.joinpath(*rel)
    if not _inside(root, target):
        raise _Refused("a symbolic link in the way points outside the folder")
    folder = Path(os.path.realpath(target.parent))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise _Clash(rel) from exc
    if not _inside(root, folder):  # changed under us
        raise _Refused("a symbolic link in the way points outside the folder")
    if os.path.isdir(folder / target.name) and not os.path.islink(folder / target.name):
        raise _Clash(rel)
    fd, tmp = tempfile.mkstemp(prefix=".trtbatch-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, folder / target.name)  # replaces a link itself, never writes through it
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return folder / target.name


def _place(root: Path, rec: ResultRecord, text: str, files: set[tuple[str, ...]],
           dirs: set[tuple[str, ...]]) -> tuple[str, ...]:
    """Write one record at the first free candidate name; returns the name used."""
    for rel in _candidates(safe_parts(rec.path), rec.index):
        try:
            _claim(rel, files, dirs)
            _write_json(root, rel, text)
        except _Clash:
            continue
        files.add(rel)
        dirs.update(rel[:i] for i in range(1, len(rel)))
        return rel
    raise _Refused("every candidate name is taken")


def export_dir(client: Client, job_id: str, out_dir: str | Path, failed_only: bool = False) -> DirExport:
    """One JSON file per image under ``out_dir`` (created if missing), at ``<image path>.json``;
    two images with one name are told apart by the image index. Nothing is written outside."""
    client.store.meta(job_id)  # raises JobError for an unknown job
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--dir {out}: not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--dir {out}: cannot create the folder: {exc.strerror or exc}") from exc
    report = DirExport(root=Path(os.path.realpath(out)))
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for rec in client.store.iter_results(job_id, failed_only=failed_only):
        text = json.dumps(rec.as_row(), ensure_ascii=False, indent=1) + "\n"
        try:
            rel = _place(report.root, rec, text, files, dirs)
        except (_Refused, OSError) as exc:
            reason = str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc.strerror or exc}"
            report.refused.append((rec.index, rec.path, reason))
            continue
        report.written += 1
        if rel != next(_candidates(safe_parts(rec.path), rec.index)):
            report.renamed.append((rec.index, rec.path, "/".join(rel)))
    return report
