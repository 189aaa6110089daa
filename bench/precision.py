"""Precision benchmark (``trtbatch bench-precision`` / ``bench/precision.py``).

For each model (ResNet50 and MobileNetV2 by default; random weights, for speed only) and each CPU
precision (FP32, INT8 from a PTQ calibration job, bf16 where the CPU has AVX512-BF16/AMX), one run
measures the bare predictor and the end-to-end rate through submit -> Redis -> worker, and prints
one JSON line with every figure and the INT8/FP32 and bf16/FP32 ratios measured in that run. It also
runs the accuracy side on the trained digits model: a PTQ calibration job with a labelled eval
set (the quantization report) and real end-to-end jobs in FP32 and INT8, whose accuracies come from
the result store.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import env as bench_env
from bench import support as bench_support
from bench import throughput as bench
from common import catalog, keys
from common.config import Settings
from producer import jobs, submit
from producer.calibrate import CalibrateOptions, calibrate, pull_version


def model_rates(env: bench_env.BenchEnv, opts: bench_env.BenchOptions, precisions: list[str], folder: Path
                ) -> dict[str, Any]:
    """Bare and end-to-end images/s of one model in each precision, one worker for all of them."""
    out: dict[str, Any] = {}
    if "int8" in precisions:
        worker = env.start_worker(opts, f"{opts.model}:fp32:{opts.batch_size}")
        try:
            bench.ensure_int8(env, opts, folder)
        finally:
            bench_env.stop(worker)
    arrays = None
    for precision in precisions:
        popts = replace(opts, precision=precision)
        resolved = catalog.resolve(env.client.artifacts, opts.model, precision, "cpu")
        if arrays is None:
            arrays = bench.preprocessed(env.client, resolved.version_id, folder, max(4 * opts.batch_size, 64))
        rate = bench.bare(popts, env.client, resolved, arrays)["images_per_s"]
        out[precision] = {"bare_images_per_s": round(rate, 2)}
    warm = [f"{opts.model}:{p}:{opts.batch_size}" for p in precisions]
    worker = env.start_worker(opts, warm)
    try:
        for precision in precisions:
            result = bench.e2e(env, replace(opts, precision=precision), folder)
            out[precision]["e2e_images_per_s"] = round(result["images_per_s"], 2)
            out[precision]["ratio_e2e_over_bare"] = round(result["images_per_s"] / out[precision]["bare_images_per_s"],
                                                          4)
    finally:
        bench_env.stop(worker)
    base = out.get("fp32")
    for precision, row in out.items():
        if base and precision != "fp32":
            row["bare_speedup_vs_fp32"] = round(row["bare_images_per_s"] / base["bare_images_per_s"], 3)
            row["e2e_speedup_vs_fp32"] = round(row["e2e_images_per_s"] / base["e2e_images_per_s"], 3)
    return out


def digits_accuracy(env: bench_env.BenchEnv, opts: bench_env.BenchOptions, workdir: Path) -> dict[str, Any]:
    """PTQ calibration report and end-to-end FP32 vs INT8 accuracy on the held-out digits."""
    from tools import modelmake

    client = env.client
    images = workdir / "digits"
    if not client.repo.exists("digits"):
        modelmake.make_digits(client.repo, export_dir=images)
    else:
        modelmake.export_images(modelmake.digits_data(), images)
    labels = images / "labels.csv"
    calib = workdir / "calib.csv"
    with labels.open() as src, calib.open("w", newline="") as dst:
        rows = list(csv.DictReader(src))[:200]
        writer = csv.DictWriter(dst, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows({"path": str(images / r["path"]), "label": r["label"]} for r in rows)
    dopts = replace(opts, model="digits", threads=opts.threads)
    worker = env.start_worker(dopts, "digits:fp32:16")
    try:
        submit.publish_local(client, "digits", "fp32")
        job = calibrate(client, CalibrateOptions(model="digits", images=(str(calib),), samples=200,
                                                  eval_paths=(str(labels),), algo="hist"))
        final = jobs.wait(client, job, timeout_s=600)
        if final.state != "done":
            raise RuntimeError(f"digits calibration failed: {final.meta.get('error')}")
        pull_version(client, final.meta["result_name"], final.meta["result_version"])
        out: dict[str, Any] = {"calibration_job": job}
        for precision in ("fp32", "int8", "bf16"):
            job_id = submit.submit(client, submit.SubmitOptions(paths=(str(labels),), model="digits",
                                                                precision=precision, target="cpu"))
            jobs.wait(client, job_id, timeout_s=600)
            out[f"{precision}_accuracy"] = jobs.accuracy(client, job_id)["accuracy"]
        out["int8_drop_pt"] = round((out["fp32_accuracy"] - out["int8_accuracy"]) * 100, 3)
        out["bf16_drop_pt"] = round((out["fp32_accuracy"] - out["bf16_accuracy"]) * 100, 3)
        report = client.conn.get(keys.report(final.meta["result_version"]))
        out["report"] = report.decode() if report else None
        return out
    finally:
        bench_env.stop(worker)


def run(models: list[str], precisions: list[str], opts: bench_env.BenchOptions, base: Settings | None = None
        ) -> dict[str, Any]:
    import json

    from workers.engines.paddle_import import paddle

    base = base or Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="trtbatch-prec-", dir="/tmp"))
    env = bench_env.BenchEnv(base, workdir)
    try:
        folder = bench_support.image_folder(base.cache_dir / "bench", max(opts.images, opts.calib_images), opts.sizes)
        result: dict[str, Any] = {"bench": "precision", "batch_size": opts.batch_size, "threads": opts.threads,
                                  "images": opts.images, "paddle": paddle().__version__,
                                  "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": {}}
        for model in models:
            mopts = replace(opts, model=model)
            bench.ensure_model(env.client, mopts)
            submit.publish_local(env.client, model, "fp32")
            result["models"][model] = model_rates(env, mopts, precisions, folder)
        digits = digits_accuracy(env, opts, workdir)
        report = json.loads(digits.pop("report")) if digits.get("report") else None
        if report:
            digits["report_rows"] = report["precisions"]
        result["digits"] = digits
        return result
    finally:
        env.close()
        shutil.rmtree(workdir, ignore_errors=True)
