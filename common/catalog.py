"""Which model version serves a request: the fleet-wide catalogue in Redis.

A request names a model and a precision. For INT8 the version that actually serves it is, in
order: the model itself if it is quantized; its quantized sibling ``<name>@int8-ptq`` (made by
``trtbatch calibrate --method ptq``, or registered with ``models add --quantized``); or, for
TensorRT only, the FP32 model plus a TensorRT calibration table (``--method trt``). Anything
else is a clear error naming the command that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common import keys
from common.artifacts import ArtifactStore
from common.errors import ModelError, PrecisionUnsupportedError
from common.manifest import ModelManifest
from common.repo import quantized_name
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB


@dataclass(frozen=True)
class Resolved:
    name: str
    version_id: str
    manifest: ModelManifest
    int8_source: str | None
    target: str


def latest_version(artifacts: ArtifactStore, name: str) -> str:
    versions = artifacts.versions(name)
    if not versions:
        raise ModelError(f"model {name!r} is not published to this Redis; add it with "
                         f"`trtbatch models add` or `trtbatch models make`, then submit from that machine")
    return versions[0]


def has_calibration(artifacts: ArtifactStore, version_id: str) -> bool:
    pattern = keys.calib_table(version_id, "*")
    return next(iter(artifacts.conn.scan_iter(match=pattern, count=100)), None) is not None


def resolve(artifacts: ArtifactStore, name: str, precision: str, target: str,
            version_id: str | None = None) -> Resolved:
    vid = version_id or latest_version(artifacts, name)
    manifest = artifacts.manifest(vid)
    if precision != "int8":
        return Resolved(name, vid, manifest, None, target)
    if manifest.quantized:
        return Resolved(name, vid, manifest, INT8_QUANTIZED, target)
    qname = quantized_name(name)
    qversions = artifacts.versions(qname)
    if qversions:
        return Resolved(qname, qversions[0], artifacts.manifest(qversions[0]), INT8_QUANTIZED, target)
    if target in ("trt", "any") and has_calibration(artifacts, vid):
        return Resolved(name, vid, manifest, INT8_TRT_CALIB, "trt")
    raise PrecisionUnsupportedError(
        f"INT8 for model {name!r} needs a quantized version or a TensorRT calibration table; make one "
        f"with `trtbatch calibrate --model {name} --images DIR --method ptq` (served on CPU and "
        f"TensorRT) or `--method trt` (TensorRT nodes only)")
