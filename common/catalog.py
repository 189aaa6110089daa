"""Which model version serves a request: the fleet-wide catalogue in Redis.

A request names a model, a precision, an engine (or any) and a backend (or any). The version that
serves it is, for INT8, in order: the model itself if it is quantized; for TensorRT, the FP32
model plus a calibration table (``calibrate --method trt``); its quantized sibling
``<name>@int8-ptq`` (``calibrate --method ptq``, or ``models add --quantized``). Anything else is a
clear error naming the command that fixes it.

The onnxruntime engine runs the ONNX form of that version: the version itself when it is an ONNX
model, else the version ``<name>.onnx`` (or ``<name>.onnx-fp16`` for the CUDA EP's FP16) that a
conversion job (``trtbatch convert``) made from it and that names it as ``source_version``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common import keys
from common.artifacts import ArtifactStore
from common.errors import ModelError, PrecisionUnsupportedError
from common.manifest import ModelManifest
from common.repo import quantized_name
from common.routing import ENGINES, INT8_QUANTIZED, INT8_TRT_CALIB, possible
from common.spec import ort_model_variant


@dataclass(frozen=True)
class Resolved:
    name: str
    version_id: str
    manifest: ModelManifest
    int8_source: str | None
    target: str
    engine: str = "any"


def latest_version(artifacts: ArtifactStore, name: str) -> str:
    versions = artifacts.versions(name)
    if not versions:
        known = artifacts.model_names()
        here = f"published: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''}" if known else "none is"
        raise ModelError(f"model {name!r} is not published to this Redis ({here}); add it with "
                         f"`trtbatch models add DIR` or `trtbatch models make`")
    return versions[0]


def has_calibration(artifacts: ArtifactStore, version_id: str) -> bool:
    pattern = keys.calib_table(version_id, "*")
    return next(iter(artifacts.conn.scan_iter(match=pattern, count=100)), None) is not None


def onnx_name(source_name: str, variant: str) -> str:
    """The name of a version's ONNX form: ``digits.onnx``, ``digits.onnx-fp16``, ``digits@int8-ptq.onnx``."""
    return f"{source_name}.onnx-fp16" if variant == "fp16" else f"{source_name}.onnx"


def onnx_form(artifacts: ArtifactStore, version_id: str, manifest: ModelManifest, variant: str) -> str | None:
    """The version id of ``version_id``'s ONNX form for ``variant`` (fp32 | fp16 | qdq), or None."""
    if manifest.format == "onnx" and variant != "fp16":
        return version_id
    if manifest.format == "onnx" and manifest.provenance.get("variant") == "fp16":
        return version_id
    for vid in artifacts.versions(onnx_name(manifest.name, variant)):
        if artifacts.manifest(vid).provenance.get("source_version") == version_id:
            return vid
    return None


def engine_artifact(artifacts: ArtifactStore, version_id: str, manifest: ModelManifest, engine: str,
                    variant: str) -> str:
    """The version an engine loads to serve ``version_id``: the version itself for Paddle, its ONNX
    form for ONNX Runtime; a missing form is an error naming the conversion to run."""
    if engine == "paddle":
        if manifest.format != "paddle":
            raise PrecisionUnsupportedError(f"{manifest.name} is an ONNX model: only the onnxruntime engine serves it")
        return version_id
    found = onnx_form(artifacts, version_id, manifest, variant)
    if found is None:
        flag = " --fp16" if variant == "fp16" else ""
        raise ModelError(f"{manifest.name} ({version_id}) has no {variant} ONNX form for the onnxruntime engine; "
                         f"make it with `trtbatch convert --model {manifest.name}{flag} --wait`")
    return found


TableCheck = Callable[[str, str, ModelManifest], bool]  # (engine, version, manifest) -> a table fits the job


def resolve(artifacts: ArtifactStore, name: str, precision: str, target: str, version_id: str | None = None,
            has_table: TableCheck | None = None, engine: str = "any") -> Resolved:
    """The version serving (name, precision, target, engine), and the engine its queue names."""
    vid = version_id or latest_version(artifacts, name)
    manifest = artifacts.manifest(vid)
    if manifest.format == "onnx":
        if engine == "paddle":
            raise PrecisionUnsupportedError(f"{name} is an ONNX model: only the onnxruntime engine serves it "
                                            f"(submit with --engine onnxruntime or any)")
        engine = "onnxruntime"
    if precision != "int8":
        return Resolved(name, vid, manifest, None, target, engine)
    return _resolve_int8(artifacts, name, vid, manifest, target, engine, has_table)


def _resolve_int8(artifacts: ArtifactStore, name: str, vid: str, manifest: ModelManifest, target: str, engine: str,
                  has_table: TableCheck | None) -> Resolved:
    if manifest.quantized:
        return Resolved(name, vid, manifest, INT8_QUANTIZED, target, engine)
    table = has_table or (lambda _e, v, _m: has_calibration(artifacts, v))
    tabled = next((e for e in _table_engines(engine) if table(e, vid, manifest)), None)
    if target == "trt" and tabled:  # the guide's first choice on TensorRT
        return Resolved(name, vid, manifest, INT8_TRT_CALIB, "trt", tabled)
    qname = quantized_name(name)
    stale = False
    for qvid in artifacts.versions(qname):
        qmanifest = artifacts.manifest(qvid)
        source = qmanifest.provenance.get("source_version")
        if source in (None, vid):  # user-registered quantized models carry no source version
            return Resolved(qname, qvid, qmanifest, INT8_QUANTIZED, target, engine)
        stale = True
    if target == "any" and tabled:  # a quantized model serves CPUs too; a table only TensorRT
        return Resolved(name, vid, manifest, INT8_TRT_CALIB, "trt", tabled)
    why = (f"{qname} was made from an older version of {name!r}, so it no longer matches; re-run calibration"
           if stale else f"INT8 for model {name!r} needs a quantized version or a TensorRT calibration table")
    raise PrecisionUnsupportedError(
        f"{why}; make one with `trtbatch calibrate --model {name} --images DIR --method ptq` (served on CPU and "
        f"TensorRT) or `--method trt` (TensorRT nodes only)")


def _table_engines(engine: str) -> tuple[str, ...]:
    """Whose TensorRT calibration table to look for: ONNX Runtime's first (it runs on every GPU it
    supports; Paddle 2.6.2's CUDA 11.8 build computes wrong results on Hopper)."""
    return ("onnxruntime", "paddle") if engine == "any" else (engine,)


def engines_with_forms(artifacts: ArtifactStore, resolved: Resolved, precision: str, target: str) -> tuple[str, ...]:
    """Engines that have what they need to serve the resolved version: Paddle its program, ONNX Runtime
    an ONNX form for every backend the job may land on."""
    out = []
    for engine in ENGINES:
        if resolved.engine not in ("any", engine) or not possible(engine, target, precision):
            continue
        if engine == "paddle" and resolved.manifest.format != "paddle":
            continue
        if engine == "onnxruntime" and missing_forms(artifacts, resolved, precision, target):
            continue
        out.append(engine)
    return tuple(out)


def missing_forms(artifacts: ArtifactStore, resolved: Resolved, precision: str, target: str) -> list[str]:
    """The ONNX variants an onnxruntime job of this (precision, target) may need that do not exist."""
    backends = [b for b in ("cpu", "gpu", "trt") if target in ("any", b) and possible("onnxruntime", b, precision)]
    variants = {ort_model_variant(b, precision, resolved.int8_source) for b in backends}
    return sorted(v for v in variants if onnx_form(artifacts, resolved.version_id, resolved.manifest, v) is None)
