"""What `models show` tells about a model: its versions, how each engine and precision is served, and
the quantization reports calibration jobs stored with its versions."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from common import catalog, keys
from common.calibration import available_tables
from common.manifest import ModelManifest
from common.repo import quantized_name
from producer.client import Client


def report_of(client: Client, version_id: str) -> dict[str, Any] | None:
    """The quantization report stored with a version, if a calibration job made one."""
    raw = client.conn.get(keys.report(version_id))
    return json.loads(raw) if raw else None


def reports_for(client: Client, name: str) -> list[dict[str, Any]]:
    """Reports of every published version of ``name`` and of its quantized sibling, newest first."""
    out = []
    for model in (name, quantized_name(name)):
        for vid in client.artifacts.versions(model):
            report = report_of(client, vid)
            if report:
                out.append(report)
    return sorted(out, key=lambda r: -r.get("created_s", 0))


def format_report(report: dict[str, Any]) -> str:
    lines = [f"report     {report.get('version_name', '?')} ({report.get('version_id', '?')}) "
             f"{report.get('method', '?')}/{report.get('algo', '?')} on {report.get('worker', '?')}, "
             f"{report.get('eval_images', 0)} eval images"]
    for row in report.get("precisions", []):
        acc = row.get("accuracy")
        acc_text = f" acc {acc * 100:.2f}%" if acc is not None else ""
        drop = row.get("accuracy_drop_pt")
        drop_text = f" (drop {drop:+.2f} pt)" if drop is not None else ""
        lines.append(f"  {row['precision']:<5} top-1 agree {row.get('top1_agreement', 1.0) * 100:.2f}%"
                     f" mean|d| {row.get('mean_abs_diff', 0):.3g} max|d| {row.get('max_abs_diff', 0):.3g}"
                     f"{acc_text}{drop_text} {row.get('images_per_s', 0):.1f} img/s")
    for flag in report.get("flags", []):
        lines.append(f"  ! {flag}")
    return "\n".join(lines)


def describe(client: Client, name: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name}
    if client.repo.exists(name):
        info["path"] = str(client.repo.dir(name))
        info["manifest"] = dataclasses.asdict(client.repo.load(name))
    versions = []
    for vid in client.artifacts.versions(name):
        v = client.artifacts.version(vid)
        versions.append({"version_id": vid, "created_s": v["created_s"], "files": v["files"],
                         "provenance": json.loads(v["provenance"]) if "provenance" in v else None})
    info["versions"] = versions
    if "manifest" not in info and versions:
        info["manifest"] = dataclasses.asdict(client.artifacts.manifest(versions[0]["version_id"]))
    if "manifest" not in info:
        client.repo.load(name)  # raises the "unknown model" error with the known names
    info["current_version"] = versions[0]["version_id"] if versions else None
    info["quantization_reports"] = reports_for(client, name)
    qname = quantized_name(name)
    if client.repo.exists(qname) or client.artifacts.versions(qname):
        info["quantized_version"] = qname
    info["serving"] = serving_rows(client, name, info["current_version"])
    return info


def _form_text(client: Client, vid: str | None) -> str | None:
    if vid is None:
        return None
    check = client.artifacts.manifest(vid).provenance.get("check") or {}
    if not check:
        return f"{vid}"
    return (f"{vid} (checked: rel L2 {check['rel_l2']:.2g}, top-1 {check['top1_agreement'] * 100:.1f} % "
            f"on {check['samples']} inputs)")


def serving_rows(client: Client, name: str, vid: str | None) -> list[dict[str, str]]:
    """How each (engine, precision) of the current version is served, or what to run to serve it."""
    if vid is None:
        return []
    manifest = client.artifacts.manifest(vid)
    qvid = next(iter(client.artifacts.versions(quantized_name(name))), None)
    rows = [] if manifest.format != "paddle" else _paddle_rows(client, name, vid, qvid)
    return rows + _ort_rows(client, name, vid, manifest, qvid)


def _paddle_rows(client: Client, name: str, vid: str, qvid: str | None) -> list[dict[str, str]]:
    tables = [t for t in available_tables(client.artifacts, vid) if t.get("engine", "paddle") == "paddle"]
    int8 = [f"{quantized_name(name)} {qvid} (oneDNN, Paddle-TRT)"] if qvid else []
    int8 += [f"TensorRT table for batch {t.get('batch_size')}" for t in tables]
    return [{"engine": "paddle", "precision": "fp32", "how": vid},
            {"engine": "paddle", "precision": "fp16", "how": "Paddle-TRT precision_mode=Half (TensorRT workers)"},
            {"engine": "paddle", "precision": "int8", "how": "; ".join(int8) or
             f"none yet: `trtbatch calibrate --model {name} --images DIR`"}]


def _ort_rows(client: Client, name: str, vid: str, manifest: ModelManifest, qvid: str | None) -> list[dict[str, str]]:
    fp32 = catalog.onnx_form(client.artifacts, vid, manifest, "fp32")
    fp16 = catalog.onnx_form(client.artifacts, vid, manifest, "fp16")
    todo = f"none yet: `trtbatch convert --model {name} --wait`"
    qdq = catalog.onnx_form(client.artifacts, qvid, client.artifacts.manifest(qvid), "qdq") if qvid else None
    table = fp32 and available_tables(client.artifacts, fp32)
    int8 = [f"QDQ {_form_text(client, qdq)} (CPU EP, TensorRT EP)"] if qdq else []
    int8 += ["TensorRT EP with ONNX Runtime's calibration table"] if table else []
    if not int8:
        int8 = ["none yet: `trtbatch convert --model NAME@int8-ptq` or `trtbatch calibrate --engine onnxruntime "
                "--method trt`"]
    return [{"engine": "onnxruntime", "precision": "fp32", "how": _form_text(client, fp32) or todo},
            {"engine": "onnxruntime", "precision": "fp16", "how": (_form_text(client, fp16) or todo) +
             " (CUDA EP); TensorRT EP from the fp32 form"},
            {"engine": "onnxruntime", "precision": "int8", "how": "; ".join(int8) + " (never the CUDA EP)"}]
