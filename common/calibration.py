"""The calibration contract and the TensorRT calibration-table store.

Both sides agree here on what a calibration job may ask for (methods, PTQ algorithms, how many
images each needs) and on where TensorRT calibration tables live: a hash
``trtbatch:calib:<version>:<calibration key>`` naming each table file's blob, plus the run's
metadata. The calibration key (``common/spec.py: calib_key_of``) is pure, so a producer can tell
whether a job will find its table before sending it; a worker installs the table into the
optimisation cache folder Paddle reads before it builds that INT8 engine.

Too few usable images is an error below ``MIN_IMAGES`` and a warning below ``RECOMMENDED_IMAGES``
(the guide suggests 500-1000 images for TensorRT calibration).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from common import keys
from common.artifacts import ArtifactStore
from common.errors import CalibrationError, PrecisionUnsupportedError
from common.spec import ORT_CALIB_KEY, PredictorSpec

PTQ_ALGOS = ("KL", "hist", "avg", "mse", "abs_max")
METHODS = ("ptq", "trt")
MIN_IMAGES = {"ptq": 16, "trt": 64}
RECOMMENDED_IMAGES = {"ptq": 100, "trt": 500}
FILE_FIELD = "file:"


def check_count(method: str, usable: int, bad: int) -> list[str]:
    """Raise below the hard minimum; return warnings below the recommended count."""
    if usable < MIN_IMAGES[method]:
        raise CalibrationError(f"only {usable} usable calibration images ({bad} unreadable); {method} "
                               f"calibration needs at least {MIN_IMAGES[method]} "
                               f"(recommended: {RECOMMENDED_IMAGES[method]}+)")
    warnings = []
    if usable < RECOMMENDED_IMAGES[method]:
        warnings.append(f"{usable} calibration images is below the recommended {RECOMMENDED_IMAGES[method]} "
                        f"for {method}; INT8 accuracy may suffer")
    if bad:
        warnings.append(f"{bad} calibration images could not be used")
    return warnings


# -- the table store ---------------------------------------------------------------------------
def table_key_of(spec: PredictorSpec) -> str:
    """Which calibration key a TensorRT INT8 spec reads: Paddle's depends on the engine settings
    (``calib_key``), ONNX Runtime's on the model alone (``ORT_CALIB_KEY``)."""
    return ORT_CALIB_KEY if spec.engine == "onnxruntime" else spec.calib_key()


def publish_tables(artifacts: ArtifactStore, spec: PredictorSpec, tables: dict[str, Path],
                   meta: dict[str, Any]) -> str:
    """Store tables as blobs under (version, calib key); returns the Redis key."""
    key = keys.calib_table(spec.version_id, table_key_of(spec))
    trt = spec.trt or (spec.ort.trt if spec.ort else None)
    fields: dict[str, str] = {FILE_FIELD + name: artifacts.put_file(path) for name, path in tables.items()}
    fields["meta"] = json.dumps({**meta, "engine": spec.engine, "trt": dataclasses.asdict(trt) if trt else None})
    pipe = artifacts.conn.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=fields)
    pipe.execute()
    return key


def table_files(artifacts: ArtifactStore, version_id: str, calib_key: str) -> dict[str, str]:
    raw = artifacts.conn.hgetall(keys.calib_table(version_id, calib_key))
    return {k.decode()[len(FILE_FIELD):]: v.decode() for k, v in raw.items() if k.decode().startswith(FILE_FIELD)}


def available_tables(artifacts: ArtifactStore, version_id: str) -> list[dict[str, Any]]:
    """Metadata of every calibration published for a version (for error messages and `models show`)."""
    out = []
    for key in artifacts.conn.scan_iter(match=keys.calib_table(version_id, "*"), count=100):
        meta = artifacts.conn.hget(key, "meta")
        out.append({"key": key.decode(), **(json.loads(meta) if meta else {})})
    return out


def install_tables(artifacts: ArtifactStore, spec: PredictorSpec, opt_dir: Path) -> list[Path]:
    """Write this spec's tables where its engine reads them, atomically: Paddle's
    ``<opt dir>/trt_calib_<key>``, ONNX Runtime's ``<engine cache dir>/calibration.flatbuffers``."""
    files = table_files(artifacts, spec.version_id, table_key_of(spec))
    if not files and spec.engine == "onnxruntime":
        raise PrecisionUnsupportedError(
            f"no ONNX Runtime calibration table for version {spec.version_id}; run `trtbatch calibrate --engine "
            f"onnxruntime --method trt --model MODEL --images DIR`")
    if not files:
        sizes = sorted({m.get("batch_size") for m in available_tables(artifacts, spec.version_id)} - {None})
        hint = f" (tables exist for batch sizes {sizes})" if sizes else ""
        raise PrecisionUnsupportedError(
            f"no TensorRT calibration table for version {spec.version_id} with this spec{hint}; run "
            f"`trtbatch calibrate --method trt --batch-size {spec.trt.opt_shape[0] if spec.trt else '?'}`")
    opt_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sha in files.items():
        target = opt_dir / name
        data = artifacts.blob_bytes(sha)
        if target.exists() and target.read_bytes() == data:
            written.append(target)
            continue
        tmp = target.with_name(f".{name}.{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(target)
        written.append(target)
    return written
