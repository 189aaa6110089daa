"""Content-addressed artifacts in Redis: model versions, quantized models, calibration tables.

Workers on other machines share nothing with the producer but Redis, so every file a predictor
needs travels as a blob: split into chunks of ``CHUNK_BYTES`` under ``trtbatch:blob:<sha256>:<n>``,
with ``trtbatch:blob:<sha256>`` recording its size and chunk count (written last, so a blob is
visible only once complete). A *model version* lists its files by hash; its id is a hash of that
list, so the same bytes always get the same id, on any node. Workers materialise a version into
``<cache_dir>/models/<version id>/`` via a temporary directory and an atomic rename, verifying
every file's sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from common import keys
from common.errors import ModelError
from common.manifest import MANIFEST_FILE, ModelManifest

CHUNK_BYTES = 4 * 1024 * 1024
#: What a version id may look like: it names a folder of the local cache, and it arrives in task
#: messages and job records, so anything else (None, "", "../x") is refused before it becomes a path.
_VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_version_id(vid: object) -> str:
    """``vid`` if it can be a version id, else a ``ModelError`` saying what was given."""
    if not isinstance(vid, str) or not _VERSION_ID.fullmatch(vid):
        raise ModelError(f"{vid!r} is not a model version id (expected e.g. v0123abcd...; see `trtbatch models show`)")
    return vid


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_id_of(files: dict[str, str]) -> str:
    """A version id from {file name: sha256}: stable, short, safe in paths and keys."""
    canon = json.dumps(sorted(files.items()), separators=(",", ":"))
    return "v" + hashlib.sha256(canon.encode()).hexdigest()[:20]


def version_files(model_dir: Path) -> tuple[str, ...]:
    """The files that make a version of the model in ``model_dir``: its model files and manifest."""
    return (*ModelManifest.load(model_dir).model_files, MANIFEST_FILE)


def local_version_id(model_dir: Path, names: tuple[str, ...] | None = None) -> tuple[str, dict[str, str]]:
    """Hash a model folder's files; cached in ``.version.json`` keyed by size and mtime."""
    names = names or version_files(model_dir)
    stamp = {n: _stamp(model_dir / n) for n in names}
    cache = model_dir / ".version.json"
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        cached = json.loads(cache.read_text())
        if cached["stamp"] == stamp:
            return cached["version_id"], cached["files"]
    files = {n: sha256_file(model_dir / n) for n in names}
    vid = version_id_of(files)
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"stamp": stamp, "files": files, "version_id": vid}))
    return vid, files


def _stamp(path: Path) -> list[int]:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing") from exc
    return [st.st_size, st.st_mtime_ns]


class ArtifactStore:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    # -- blobs -----------------------------------------------------------------------------
    def has_blob(self, sha: str) -> bool:
        return bool(self.conn.exists(keys.blob(sha)))

    def put_file(self, path: Path, sha: str | None = None) -> str:
        sha = sha or sha256_file(path)
        if self.has_blob(sha):
            return sha
        size = path.stat().st_size
        with open(path, "rb") as fh:
            return self._put_chunks(sha, size, iter(lambda: fh.read(CHUNK_BYTES), b""))

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if self.has_blob(sha):
            return sha
        chunks = (data[i:i + CHUNK_BYTES] for i in range(0, max(len(data), 1), CHUNK_BYTES))
        return self._put_chunks(sha, len(data), chunks)

    def _put_chunks(self, sha: str, size: int, chunks: Iterator[bytes]) -> str:
        n = 0
        for n, chunk in enumerate(chunks, start=1):
            self.conn.set(keys.blob_chunk(sha, n - 1), chunk)
        self.conn.hset(keys.blob(sha), mapping={"size": size, "chunks": n})
        return sha

    def blob_bytes(self, sha: str) -> bytes:
        meta = self.conn.hgetall(keys.blob(sha))
        if not meta:
            raise ModelError(f"artifact blob {sha[:12]} is not in Redis")
        n = int(meta[b"chunks"])
        parts = [self.conn.get(keys.blob_chunk(sha, i)) for i in range(n)]
        data = b"".join(p or b"" for p in parts)
        if hashlib.sha256(data).hexdigest() != sha:
            raise ModelError(f"artifact blob {sha[:12]} is corrupt in Redis (sha256 mismatch)")
        return data

    def blob_to_file(self, sha: str, dest: Path) -> None:
        meta = self.conn.hgetall(keys.blob(sha))
        if not meta:
            raise ModelError(f"artifact blob {sha[:12]} is not in Redis")
        digest = hashlib.sha256()
        with open(dest, "wb") as fh:
            for i in range(int(meta[b"chunks"])):
                chunk = self.conn.get(keys.blob_chunk(sha, i))
                if chunk is None:
                    raise ModelError(f"artifact blob {sha[:12]} lost chunk {i}")
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != sha:
            raise ModelError(f"artifact blob {sha[:12]} is corrupt (sha256 mismatch)")

    # -- model versions --------------------------------------------------------------------
    def publish_version(self, name: str, model_dir: Path, extra: dict[str, Any] | None = None) -> str:
        """Upload a local model folder (idempotent); returns its version id."""
        vid, files = local_version_id(model_dir)
        if self.conn.exists(keys.version(vid)):
            return vid
        for fname, sha in files.items():
            self.put_file(model_dir / fname, sha)
        manifest = (model_dir / MANIFEST_FILE).read_text()
        now = time.time()
        record = {"name": name, "manifest": manifest, "files": json.dumps(files), "created_s": now,
                  **{k: json.dumps(v) for k, v in (extra or {}).items()}}
        pipe = self.conn.pipeline(transaction=True)
        pipe.hset(keys.version(vid), mapping=record)
        pipe.zadd(keys.model_versions(name), {vid: now})
        pipe.execute()
        return vid

    def version(self, vid: str) -> dict[str, Any]:
        raw = self.conn.hgetall(keys.version(vid))
        if not raw:
            raise ModelError(f"model version {vid} is not published in Redis")
        info = {k.decode(): v.decode() for k, v in raw.items()}
        info["files"] = json.loads(info["files"])
        info["created_s"] = float(info["created_s"])
        info["version_id"] = vid
        return info

    def manifest(self, vid: str) -> ModelManifest:
        return ModelManifest.from_toml(self.version(vid)["manifest"], f"version {vid}")

    def versions(self, name: str) -> list[str]:
        """Version ids of a model name, newest first."""
        return [v.decode() for v in self.conn.zrevrange(keys.model_versions(name), 0, -1)]

    def model_names(self) -> list[str]:
        head, tail = keys.model_versions("|").split("|")
        names = set()
        for key in self.conn.scan_iter(match=f"{head}*{tail}", count=500):
            names.add(key.decode()[len(head):-len(tail)])
        return sorted(names)

    def materialize(self, vid: str, cache_root: Path) -> Path:
        """The local folder of a version, downloading it once per machine (atomic)."""
        target = cache_root / "models" / check_version_id(vid)
        if (target / ".complete").exists():
            return target
        info = self.version(vid)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{vid}.", dir=target.parent))
        try:
            for fname, sha in info["files"].items():
                self.blob_to_file(sha, tmp / fname)
            (tmp / ".complete").write_text(json.dumps({"version_id": vid, "name": info["name"]}))
            try:
                os.rename(tmp, target)
            except OSError:  # another process won the race; its copy is identical
                if not (target / ".complete").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
