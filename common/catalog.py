"""Which model version serves a request: the fleet-wide catalogue in Redis.

A request names a model and a precision. For INT8 the version that actually serves it is, in
order: the model itself if it is quantized; its quantized sibling ``<name>@int8-ptq`` (made by
``trtbatch calibrate --method ptq``, or registered with ``models add --quantized``); or, for
TensorRT only, the FP32 model plus a TensorRT calibration table (``--method trt``). Anything
else is a clear error naming the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable
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


TableCheck = Callable[[str, ModelManifest], bool]


def resolve(artifacts: ArtifactStore, name: str, precision: str, target: str,
            version_id: str | None = None, has_table: TableCheck | None = None) -> Resolved:
    """The version serving (name, precision, target). ``has_table(version, manifest)`` says whether
    a TensorRT calibration table fits the job (default: any table of the version)."""
    vid = version_id or latest_version(artifacts, name)
    manifest = artifacts.manifest(vid)
    if precision != "int8":
        return Resolved(name, vid, manifest, None, target)
    if manifest.quantized:
        return Resolved(name, vid, manifest, INT8_QUANTIZED, target)
    table = (has_table or (lambda v, _m: has_calibration(artifacts, v)))
    if target == "trt" and table(vid, manifest):  # the guide's first choice on TensorRT
        return Resolved(name, vid, manifest, INT8_TRT_CALIB, "trt")
    qname = quantized_name(name)
    stale = False
    for qvid in artifacts.versions(qname):
        qmanifest = artifacts.manifest(qvid)
        source = qmanifest.provenance.get("source_version")
        if source in (None, vid):  # user-registered quantized models carry no source version
            return Resolved(qname, qvid, qmanifest, INT8_QUANTIZED, target)
        stale = True
    if target == "any" and table(vid, manifest):
        return Resolved(name, vid, manifest, INT8_TRT_CALIB, "trt")
    why = (f"{qname} was made from an older version of {name!r}, so it no longer matches; re-run calibration"
           if stale else f"INT8 for model {name!r} needs a quantized version or a TensorRT calibration table")
    raise PrecisionUnsupportedError(
        f"{why}; make one with `trtbatch calibrate --model {name} --images DIR --method ptq` (served on CPU and "
        f"TensorRT) or `--method trt` (TensorRT nodes only)")
