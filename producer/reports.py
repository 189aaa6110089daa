"""Quantization reports: stored with a model version by calibration jobs, shown by `models show`."""

from __future__ import annotations

import json
from typing import Any

from common import keys
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
