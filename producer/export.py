"""Result export: a stream (JSONL, CSV), a file (JSONL, CSV, Parquet) or one JSON file per image.

``results -o FILE`` writes FILE atomically (a temporary file beside it, renamed when complete); without
``-f`` the format is the one FILE's suffix names (``choose_format``). Parquet is written in row groups
by producer/parquet.py.

Export to a folder (``results --dir OUT``) writes one JSON file per image at
``OUT/<image path below the input root>.json``: the input root is the deepest folder holding every
image of the job (``input_root``), so /home/u/photos/a/b.jpg lands at OUT/a/b.jpg.json when all images
are under /home/u/photos. Image paths come from users and manifests, so they are made safe first
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from common.errors import InputError
from common.schemas import ResultRecord
from producer import parquet
from producer.client import Client

EXPORT_FORMATS = ("jsonl", "csv", "parquet")
STREAM_FORMATS = ("jsonl", "csv")
#: What an output file's suffix says it holds (``.json``: JSON lines, as ``results`` has always written).
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
                  ".pq": "parquet"}
CSV_COLUMNS = ("index", "path", "ok", "error", "error_code", "label", "top1_label", "top1_score",
               "top_k", "model", "version_id", "precision", "engine", "backend", "worker", "device")


def choose_format(fmt: str | None, output: str | None) -> str:
    """The format of an export: ``fmt`` (``-f``) if given, else the one ``output``'s suffix names, else
    JSONL. A suffix naming another format than ``fmt`` is refused: a ``.parquet`` file holding JSON lines
    fools every tool that opens it."""
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    suffix = Path(output).suffix.lower() if output else ""
    implied = SUFFIX_FORMATS.get(suffix)
    if fmt and implied and fmt != implied:
        raise InputError(f"-f {fmt} does not match the output file {output} ({suffix} is {implied}); "
                         f"drop -f, or name the file *.{fmt}")
    chosen = fmt or implied or "jsonl"
    if chosen not in STREAM_FORMATS and output is None:
        raise InputError(f"{chosen} is a binary file format, not a stream: give -o FILE.{chosen}")
    return chosen


def csv_row(rec: ResultRecord) -> dict[str, Any]:
    top = rec.top_k[0] if rec.top_k else {}
    return {"index": rec.index, "path": rec.path, "ok": rec.ok, "error": rec.error or "",
            "error_code": rec.error_code or "", "label": rec.label or "",
            "top1_label": top.get("label", ""), "top1_score": top.get("score", ""),
            "top_k": json.dumps(rec.top_k) if rec.top_k else "", "model": rec.model,
            "version_id": rec.version_id, "precision": rec.precision, "engine": rec.engine, "backend": rec.backend,
            "worker": rec.worker, "device": rec.device}


def export(client: Client, job_id: str, fmt: str, out: TextIO, failed_only: bool = False) -> int:
    """Write every result record of a job to the text stream ``out`` as JSONL or CSV; returns how many
    were written."""
    if fmt not in STREAM_FORMATS:
        hint = f"; {fmt} needs a file (export_file, or -o FILE)" if fmt in EXPORT_FORMATS else ""
        raise InputError(f"cannot write {fmt!r} to a stream; choose one of {', '.join(STREAM_FORMATS)}{hint}")
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


def export_file(client: Client, job_id: str, fmt: str, path: str | Path, failed_only: bool = False,
                rows_per_group: int = parquet.ROWS_PER_GROUP) -> tuple[int, Path]:
    """Write a job's records to the file ``path`` atomically: an export that fails leaves an existing file
    as it was and no temporary file behind. Returns (records written, the absolute path)."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "parquet":
        parquet.require()  # before anything is read or created
    job = client.store.record(job_id)  # raises JobError for an unknown job
    target = Path(os.path.abspath(path))
    if not target.parent.is_dir():
        raise InputError(f"output folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".trtbatch-", dir=target.parent)
    _plain_mode(fd)
    try:
        if fmt == "parquet":
            os.close(fd)
            n = parquet.write(client.store.iter_results(job_id, failed_only=failed_only), tmp, job, rows_per_group)
        else:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                n = export(client, job_id, fmt, fh, failed_only)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return n, target


def _plain_mode(fd: int) -> None:
    """The mode a file created with open() would have (0666 less the umask): mkstemp's 0600 would leave
    exported results readable by their owner only."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


#: A file name may be 255 bytes; leave room for ``~<index>.json``.
MAX_COMPONENT_BYTES = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class DirExport:
    """What ``export_dir`` did: files written, records moved to another name, records refused."""

    root: Path
    input_root: str = ""  # the folder of the images that OUT stands for ("": they share none)
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


def _components(path: str) -> tuple[bool, list[str]]:
    """(absolute?, components) of a path as written, empty and ``.`` components dropped (``..`` kept:
    the root is matched on the text, and what lies below it still goes through ``safe_parts``)."""
    return path.startswith("/"), [p for p in path.split("/") if p not in ("", ".")]


def _shared(a: list[str], b: list[str]) -> list[str]:
    """The leading components ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def input_root(paths: Iterable[str]) -> str:
    """The deepest folder holding every path, as the paths write it: ``/home/u/photos``, or ``shots`` for
    relative paths (relative to where the job was submitted); "" when they share none (some absolute and
    some relative, or nothing below ``/`` in common). Stops reading at the first path that leaves none."""
    absolute: bool | None = None
    common: list[str] | None = None
    for path in paths:
        is_abs, parts = _components(path)
        folder = parts[:-1]
        if common is None:
            absolute, common = is_abs, folder
        elif is_abs != absolute:
            return ""
        else:
            common = _shared(common, folder)
        if not common:
            return ""
    return ("/" if absolute else "") + "/".join(common or [])


def below(path: str, root: str) -> str:
    """``path`` relative to ``root`` (a folder ``input_root`` found for it; "" leaves the path as it is)."""
    if not root:
        return path
    return "/".join(_components(path)[1][len(_components(root)[1]):])


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
    _plain_mode(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, folder / target.name)  # replaces a link itself, never writes through it
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return folder / target.name


def _place(root: Path, parts: list[str], index: int, text: str, files: set[tuple[str, ...]],
           dirs: set[tuple[str, ...]]) -> tuple[str, ...]:
    """Write one record at the first free candidate name; returns the name used."""
    for rel in _candidates(parts, index):
        try:
            _claim(rel, files, dirs)
            _write_json(root, rel, text)
        except _Clash:
            continue
        files.add(rel)
        dirs.update(rel[:i] for i in range(1, len(rel)))
        return rel
    raise _Refused("every candidate name is taken")


def _out_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--dir {out}: not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--dir {out}: cannot create the folder: {exc.strerror or exc}") from exc
    return Path(os.path.realpath(out))


def export_dir(client: Client, job_id: str, out_dir: str | Path, failed_only: bool = False) -> DirExport:
    """One JSON file per image under ``out_dir`` (created if missing), at ``<image path below the input
    root>.json``; two images with one name are told apart by the image index. Nothing is written outside.

    The input root is found by a first pass over all the job's records (``--failed`` too: a failed image
    lands at the same name as in a full export, so the two line up)."""
    client.store.meta(job_id)  # raises JobError for an unknown job
    report = DirExport(root=_out_folder(out_dir))
    report.input_root = input_root(rec.path for rec in client.store.iter_results(job_id))
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for rec in client.store.iter_results(job_id, failed_only=failed_only):
        text = json.dumps(rec.as_row(), ensure_ascii=False, indent=1) + "\n"
        parts = safe_parts(below(rec.path, report.input_root))
        try:
            rel = _place(report.root, parts, rec.index, text, files, dirs)
        except (_Refused, OSError) as exc:
            reason = str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc.strerror or exc}"
            report.refused.append((rec.index, rec.path, reason))
            continue
        report.written += 1
        if rel != next(_candidates(parts, rec.index)):
            report.renamed.append((rec.index, rec.path, "/".join(rel)))
    return report
