"""Content-addressed artifacts and the model catalogue on a real redis-server (bytes, not Paddle)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import redis

from common import artifacts as artifacts_mod
from common import catalog, keys
from common.artifacts import ArtifactStore, version_id_of
from common.errors import ModelError, PrecisionUnsupportedError
from common.manifest import MANIFEST_FILE, MODEL_FILE, PARAMS_FILE, ModelManifest
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB

VERSION_FILES = (MODEL_FILE, PARAMS_FILE, MANIFEST_FILE)  # a Paddle model version
CHUNK = 1000


@pytest.fixture()
def store(store_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    monkeypatch.setattr(artifacts_mod, "CHUNK_BYTES", CHUNK)
    return ArtifactStore(store_conn)


def fake_model(folder: Path, name: str = "digits", params: bytes = b"", **manifest: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(b"program of " + name.encode() + bytes(range(256)) * 9)
    (folder / PARAMS_FILE).write_bytes(params or hashlib.sha512(name.encode()).digest() * 100)  # 6400 bytes
    ModelManifest(name=name, **manifest).save(folder)  # type: ignore[arg-type]
    return folder


def chunks_of(conn: redis.Redis, sha: str) -> list[bytes]:
    n = int(conn.hget(keys.blob(sha), "chunks"))
    return [conn.get(keys.blob_chunk(sha, i)) for i in range(n)]


# -- blobs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK, 3 * CHUNK + 500])
def test_bytes_round_trip_in_chunks(store: ArtifactStore, size: int) -> None:
    data = bytes(i * 7 % 251 for i in range(size))
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest() and store.has_blob(sha)
    meta = store.conn.hgetall(keys.blob(sha))
    assert int(meta[b"size"]) == size
    parts = chunks_of(store.conn, sha)
    assert len(parts) == max(1, -(-size // CHUNK))
    assert all(len(p) <= CHUNK for p in parts) and b"".join(parts) == data
    assert store.blob_bytes(sha) == data


def test_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 23)  # 5888 bytes: 6 chunks
    sha = store.put_file(src)
    assert len(chunks_of(store.conn, sha)) == 6
    store.blob_to_file(sha, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    assert store.put_file(src) == sha  # already there


def test_corrupt_chunk_is_detected(store: ArtifactStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    sha = store.put_bytes(data)
    store.conn.setrange(keys.blob_chunk(sha, 1), 10, b"X")
    with pytest.raises(ModelError, match=r"corrupt in Redis \(sha256 mismatch\)"):
        store.blob_bytes(sha)
    with pytest.raises(ModelError, match=r"corrupt \(sha256 mismatch\)"):
        store.blob_to_file(sha, tmp_path / "out")


def test_lost_chunk_and_missing_blob(store: ArtifactStore, tmp_path: Path) -> None:
    sha = store.put_bytes(bytes(range(256)) * 10)
    store.conn.delete(keys.blob_chunk(sha, 1))
    with pytest.raises(ModelError, match="lost chunk 1"):
        store.blob_to_file(sha, tmp_path / "out")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        store.blob_bytes(sha)
    with pytest.raises(ModelError, match="is not in Redis"):
        store.blob_bytes("0" * 64)
    with pytest.raises(ModelError, match="is not in Redis"):
        store.blob_to_file("0" * 64, tmp_path / "out2")


# -- versions -------------------------------------------------------------------------------------
def test_publish_version_is_idempotent_and_content_addressed(store: ArtifactStore, tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "a")
    vid = store.publish_version("digits", folder, extra={"source": {"made_by": "test"}})
    assert re.fullmatch(r"v[0-9a-f]{20}", vid)
    assert store.publish_version("digits", folder) == vid
    assert store.versions("digits") == [vid]
    info = store.version(vid)
    assert info["name"] == "digits" and info["version_id"] == vid and info["source"] == '{"made_by": "test"}'
    assert set(info["files"]) == set(VERSION_FILES)
    assert info["files"][PARAMS_FILE] == hashlib.sha256((folder / PARAMS_FILE).read_bytes()).hexdigest()
    assert vid == version_id_of(info["files"])
    assert info["manifest"] == (folder / MANIFEST_FILE).read_text()
    assert store.manifest(vid) == ModelManifest.load(folder)
    for sha in info["files"].values():
        assert store.has_blob(sha)
    # the same bytes in another folder (another machine) get the same id
    copy = tmp_path / "elsewhere" / "digits"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".version.json"))
    assert store.publish_version("digits", copy) == vid


def test_changed_manifest_is_a_new_version(store: ArtifactStore, tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "a")
    first = store.publish_version("digits", folder)
    ModelManifest.load(folder).with_updates(description="retrained with more data").save(folder)
    second = store.publish_version("digits", folder)
    assert second != first
    assert store.versions("digits") == [second, first]  # newest first
    assert store.manifest(second).description == "retrained with more data"


def test_unknown_version(store: ArtifactStore) -> None:
    with pytest.raises(ModelError, match="model version vnope is not published"):
        store.version("vnope")


def test_materialize_on_two_machines_gives_identical_files(store: ArtifactStore, tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "src")
    vid = store.publish_version("digits", folder)
    first = store.materialize(vid, tmp_path / "node-a" / "cache")
    second = store.materialize(vid, tmp_path / "node-b" / "cache")
    assert first == tmp_path / "node-a" / "cache" / "models" / vid and first != second
    for name in VERSION_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes() == (folder / name).read_bytes()
    assert (first / ".complete").exists()
    assert sorted(p.name for p in first.parent.iterdir()) == [vid]  # no temporary folder left
    # a second materialize is a no-op: it does not even need Redis to still hold the blobs
    for sha in store.version(vid)["files"].values():
        store.conn.delete(keys.blob(sha))
    assert store.materialize(vid, tmp_path / "node-a" / "cache") == first
    with pytest.raises(ModelError, match="is not in Redis"):
        store.materialize(vid, tmp_path / "node-c" / "cache")
    assert not (tmp_path / "node-c" / "cache" / "models" / vid).exists()
    assert list((tmp_path / "node-c" / "cache" / "models").iterdir()) == []


def test_materialize_refuses_corrupt_blobs(store: ArtifactStore, tmp_path: Path) -> None:
    vid = store.publish_version("digits", fake_model(tmp_path / "src"))
    sha = store.version(vid)["files"][PARAMS_FILE]
    store.conn.setrange(keys.blob_chunk(sha, 0), 0, b"\x00\x00")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        store.materialize(vid, tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_model_names(store: ArtifactStore, tmp_path: Path) -> None:
    assert store.model_names() == []
    store.publish_version("resnet", fake_model(tmp_path / "r", "resnet"))
    store.publish_version("digits", fake_model(tmp_path / "d", "digits"))
    store.publish_version("digits@int8-ptq", fake_model(tmp_path / "q", "digits@int8-ptq", quantized=True,
                                                        base="digits"))
    assert store.model_names() == ["digits", "digits@int8-ptq", "resnet"]


# -- catalogue ------------------------------------------------------------------------------------
def test_resolve_fp32_uses_the_latest_version(store: ArtifactStore, tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "d")
    old = store.publish_version("digits", folder)
    ModelManifest.load(folder).with_updates(description="v2").save(folder)
    new = store.publish_version("digits", folder)
    r = catalog.resolve(store, "digits", "fp32", "any")
    assert (r.name, r.version_id, r.int8_source, r.target) == ("digits", new, None, "any")
    assert r.manifest.description == "v2"
    assert catalog.resolve(store, "digits", "fp16", "trt", version_id=old).version_id == old
    with pytest.raises(ModelError, match="model 'nope' is not published to this Redis"):
        catalog.resolve(store, "nope", "fp32", "any")


def test_resolve_int8_of_a_quantized_model(store: ArtifactStore, tmp_path: Path) -> None:
    vid = store.publish_version("q", fake_model(tmp_path / "q", "q", quantized=True, base="x"))
    r = catalog.resolve(store, "q", "int8", "cpu")
    assert (r.name, r.version_id, r.int8_source, r.target) == ("q", vid, INT8_QUANTIZED, "cpu")


def test_resolve_int8_prefers_the_quantized_sibling(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_version("digits", fake_model(tmp_path / "d"))
    qvid = store.publish_version("digits@int8-ptq", fake_model(tmp_path / "q", "digits@int8-ptq", quantized=True,
                                                               base="digits"))
    r = catalog.resolve(store, "digits", "int8", "any")
    assert (r.name, r.version_id, r.int8_source, r.target) == ("digits@int8-ptq", qvid, INT8_QUANTIZED, "any")
    assert r.manifest.quantized


def test_resolve_int8_without_a_source_names_the_fix(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_version("digits", fake_model(tmp_path / "d"))
    with pytest.raises(PrecisionUnsupportedError) as info:
        catalog.resolve(store, "digits", "int8", "any")
    assert "trtbatch calibrate --model digits" in str(info.value)


def test_resolve_int8_with_a_tensorrt_calibration_table(store: ArtifactStore, tmp_path: Path) -> None:
    vid = store.publish_version("digits", fake_model(tmp_path / "d"))
    table = store.put_bytes(b"TRT-8503-EntropyCalibration2\n")
    store.conn.hset(keys.calib_table(vid, "0123456789abcdef"), "trt_calib_x", table)
    assert catalog.has_calibration(store, vid)
    for target in ("any", "trt"):
        r = catalog.resolve(store, "digits", "int8", target)
        assert (r.name, r.version_id, r.int8_source, r.target) == ("digits", vid, INT8_TRT_CALIB, "trt")
    with pytest.raises(PrecisionUnsupportedError, match="calibrate"):
        catalog.resolve(store, "digits", "int8", "cpu")  # a TensorRT table cannot serve oneDNN
