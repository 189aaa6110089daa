"""Walk what the user pointed at, lazily and in a stable order.

Accepted: image files (any extension when named explicitly), directories (recursive, image
extensions only, sorted), glob patterns (``'shots/**/*.jpg'``) and manifests - ``.csv`` with a
``path`` column or ``.jsonl`` with a ``path`` key, each with an optional ``label``; relative paths
in a manifest are relative to the manifest. The order is deterministic, so a resumed submit
(``--resume``) skips exactly the batches already sent.

File names that are not valid UTF-8 are read by their real bytes and reported with the invalid
bytes replaced; unreadable files (permissions, broken links) become per-image errors later.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                    ".pbm", ".jfif", ".jpe"}
MANIFEST_EXTENSIONS = {".csv", ".jsonl"}
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputItem:
    path: str  # the real path, possibly with surrogate escapes
    label: str | None = None

    @property
    def display(self) -> str:
        return display_path(self.path)


def display_path(path: str) -> str:
    """A printable, UTF-8-safe form of a path (undecodable bytes become U+FFFD)."""
    return os.fsencode(path).decode("utf-8", "replace")


def read_bytes(path: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """(data, None) or (None, reason) - never raises for an unreadable file."""
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            return None, f"file is {size} bytes, over the {max_bytes}-byte limit"
        with open(path, "rb") as fh:
            return fh.read(), None
    except FileNotFoundError:
        if os.path.islink(path):
            return None, "broken symbolic link"
        return None, "file not found"
    except IsADirectoryError:
        return None, "is a directory"
    except PermissionError:
        return None, "permission denied"
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"
    except ValueError:  # a NUL byte in the name (a manifest's row): no file can have that name
        return None, "the path contains a NUL byte"


def iter_inputs(specs: Iterable[str]) -> Iterator[InputItem]:
    for spec in specs:
        yield from _one(spec)


def check_inputs(specs: Iterable[str]) -> list[str]:
    """Fail fast, before a job exists: on a path that names nothing at all, a manifest with a bad row
    anywhere (every row is read; images are not), or inputs that hold no image. Returns a warning
    for each path that holds no image while others do."""
    specs = list(specs)
    if not specs:
        return []
    empty = []
    for spec in specs:
        if set(spec) & GLOB_CHARS and not os.path.lexists(spec):  # a real "photo [1].png" is a file
            if not glob.glob(spec, recursive=True):
                raise InputError(f"no file matches {spec!r}")
        elif not os.path.lexists(spec):
            raise InputError(f"no such file or directory: {display_path(spec)}")
        if not _holds_images(spec):
            empty.append(spec)
    if len(empty) == len(specs):
        raise InputError("no images in " + "; ".join(f"{display_path(spec)} ({_why_empty(spec)})" for spec in specs))
    return [f"{display_path(spec)} holds no images ({_why_empty(spec)})" for spec in empty]


def _is_manifest(spec: str) -> bool:
    return Path(spec).suffix.lower() in MANIFEST_EXTENSIONS and os.path.isfile(spec)


def _why_empty(spec: str) -> str:
    if _is_manifest(spec):
        return "the manifest has no rows, only a header" if os.path.getsize(spec) else "an empty manifest"
    if os.path.isdir(spec):
        return "no file with an image extension (.jpg, .jpeg, .png, .bmp, .webp, .tif, ...) in it or below"
    return "not an image file by its extension, nor a .csv/.jsonl manifest"


def _holds_images(spec: str) -> bool:
    """Whether ``spec`` yields an image; reads a manifest to its end so that a bad row fails now."""
    if _is_manifest(spec):
        return sum(1 for _ in _manifest(spec)) > 0
    return next(_one(spec), None) is not None


def _one(spec: str) -> Iterator[InputItem]:
    if set(spec) & GLOB_CHARS and not os.path.lexists(spec):
        for match in sorted(glob.glob(spec, recursive=True)):
            if os.path.isdir(match):
                yield from _walk(match)
            else:
                yield InputItem(match)
        return
    if os.path.isdir(spec):
        yield from _walk(spec)
    elif _is_manifest(spec):
        yield from _manifest(spec)
    else:
        yield InputItem(spec)


def _walk(root: str) -> Iterator[InputItem]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield InputItem(os.path.join(dirpath, name))


def _manifest(path: str) -> Iterator[InputItem]:
    """The manifest's rows; whatever is wrong with the file (not UTF-8, unreadable, malformed CSV)
    is an ``InputError`` naming it, so the CLI prints one line instead of a traceback."""
    try:
        yield from _manifest_rows(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"{display_path(path)}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8") \
            from exc
    except csv.Error as exc:
        raise InputError(f"{display_path(path)}: not a readable CSV manifest: {exc}") from exc
    except OSError as exc:
        raise InputError(f"{display_path(path)}: cannot read the manifest: {exc.strerror or exc}") from exc


def _manifest_rows(path: str) -> Iterator[InputItem]:
    base = os.path.dirname(path)
    rows = _csv_rows(path) if path.lower().endswith(".csv") else _jsonl_rows(path)
    for lineno, row in rows:
        value = row.get("path")
        if not value:
            raise InputError(f"{display_path(path)}:{lineno}: row has no 'path'")
        if not isinstance(value, str):
            raise InputError(f"{display_path(path)}:{lineno}: 'path' must be a string, not {value!r}")
        full = value if os.path.isabs(value) else os.path.join(base, value)
        label = row.get("label")
        yield InputItem(full, None if label in (None, "") else str(label))


def _csv_rows(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"{display_path(path)}: a CSV manifest needs a 'path' column")
        yield from enumerate(reader, start=2)


def _jsonl_rows(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{display_path(path)}:{lineno}: not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise InputError(f"{display_path(path)}:{lineno}: expected an object")
            yield lineno, row
