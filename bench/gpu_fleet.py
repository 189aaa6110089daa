#!/usr/bin/env python3
"""GPU fleet verification: real Redis + `trtbatch worker --device gpu:all` on a multi-GPU host.

Shows, and writes as one JSON document:
  1. one worker process per GPU, each pinned to a different GPU (its own fleet record, and the
     processes nvidia-smi lists on each GPU);
  2. a job's outputs on GPU match a CPU worker's within 1e-3 relative (same images, raw outputs);
  3. images/s of the same job on 1 GPU and on all GPUs (ResNet50 FP32, batch 64 by default).

    python bench/gpu_fleet.py --images 20000 --batch-size 64 --output gpu-fleet.json

Needs TRTBATCH_REDIS_URL (or the embedded server), paddlepaddle-gpu 2.6.2 and nvidia-smi. Anyone with
a GPU host can rerun it; docs/gpu-verification.md records the figures of our runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import synthetic_jpeg
from common.config import Settings
from producer import jobs, submit
from producer.client import Client

CLI = [sys.executable, "-m", "cli"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_images(folder: Path, distinct: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:05d}.jpg" for i in range(distinct)]
    todo = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    with ProcessPoolExecutor() as pool:
        for (path, _), data in zip(todo, pool.map(synthetic_jpeg, [size] * len(todo), [i for _, i in todo],
                                                  chunksize=32), strict=True):
            path.write_bytes(data)
    return paths


def manifest(paths: list[Path], n: int, out: Path) -> Path:
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path"])
        for i in range(n):
            writer.writerow([str(paths[i % len(paths)])])
    return out


def start_workers(device: str, name: str, extra: list[str], logfile: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "worker", "--device", device, "--name", name, *extra],
                            stdout=open(logfile, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(client: Client, names: set[str], proc: subprocess.Popen, timeout_s: float = 600) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"workers exited with {proc.returncode}")
        live = [w for w in client.live_workers() if w.name in names and w.state == "ready"]
        if {w.name for w in live} == names:
            return live
        time.sleep(0.5)
    raise RuntimeError(f"workers {names} not ready in {timeout_s}s")


def stop(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def nvidia_smi(*query: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         check=True).stdout
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def pinning(client: Client, names: set[str]) -> dict:
    """Which GPU each worker reports, and on which GPU nvidia-smi sees its pool processes."""
    gpus = {row[1]: int(row[0]) for row in nvidia_smi("--query-gpu=index,uuid")}
    apps = nvidia_smi("--query-compute-apps=pid,gpu_uuid,used_memory")
    on_gpu = {int(pid): gpus.get(uuid) for pid, uuid, _ in apps}
    rows = []
    for w in sorted(client.live_workers(), key=lambda w: w.name):
        if w.name not in names:
            continue
        pids = [s["pid"] for s in w.slots]
        rows.append({"worker": w.name, "reported_device": w.device, "gpu_name": w.gpu_name,
                     "gpu_memory_used_mb": w.gpu_memory_used_mb, "gpu_memory_total_mb": w.gpu_memory_total_mb,
                     "pool_pids": pids, "nvidia_smi_gpu_of_pids": [on_gpu.get(pid) for pid in pids]})
    return {"nvidia_smi_compute_apps": apps, "workers": rows,
            "each_worker_on_its_own_gpu": all(set(r["nvidia_smi_gpu_of_pids"]) == {int(r["reported_device"][4:])}
                                              for r in rows) and len({r["reported_device"] for r in rows}) == len(rows)}


def run_job(client: Client, source: Path, model: str, target: str, batch: int, raw: bool = False) -> tuple[str, float]:
    opts = submit.SubmitOptions(paths=(str(source),), model=model, target=target, batch_size=batch,
                                include_outputs=raw)
    job_id = submit.submit(client, opts)
    final = jobs.wait(client, job_id, poll_s=0.2, timeout_s=1800)
    if final.state != "done" or final.failed:
        raise RuntimeError(f"job {job_id} {final.state}, {final.failed} failed: {final.error_reasons}")
    return job_id, final.n_images / (final.meta["finished_s"] - final.meta["created_s"])


def outputs(client: Client, job_id: str) -> np.ndarray:
    return np.array([next(iter(r.outputs.values())) for r in client.store.iter_results(job_id)], np.float64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--distinct", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--compare-images", type=int, default=64)
    ap.add_argument("--decode-threads", type=int, default=0)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--workdir", default="/tmp/gpu-fleet")
    ap.add_argument("--output", default="")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    client = Client(Settings.from_env())
    from tools import modelmake

    if not client.repo.exists(args.model):
        modelmake.make_vision(client.repo, args.model)
    gpus = [int(r[0]) for r in nvidia_smi("--query-gpu=index")]
    decode = args.decode_threads or max(2, (os.cpu_count() or 2) // max(1, len(gpus) * args.slots))
    log(f"{len(gpus)} GPUs: {nvidia_smi('--query-gpu=index,name,driver_version,memory.total')}")
    paths = make_images(work / "images", args.distinct, 256)
    big = manifest(paths, args.images, work / "big.csv")
    small = manifest(paths, args.compare_images, work / "small.csv")
    report: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": args.model,
                    "batch_size": args.batch_size, "images": args.images, "decode_threads": decode,
                    "slots": args.slots,
                    "gpus": nvidia_smi("--query-gpu=index,name,driver_version,memory.total"),
                    "cpu_count": os.cpu_count()}
    gpu_args = ["--decode-threads", str(decode), "--slots", str(args.slots),
                "--warm", f"{args.model}:fp32:{args.batch_size}"]
    names = {f"fleet-gpu{i}" for i in gpus}

    # 1 + 2: all GPUs plus a CPU reference worker
    fleet = start_workers("gpu:all", "fleet", gpu_args, work / "gpu-all.log")
    cpu = start_workers("cpu", "fleet-cpu", ["--threads", str(os.cpu_count() or 2), "--slots", "1"],
                        work / "cpu.log")
    try:
        wait_ready(client, names, fleet)
        wait_ready(client, {"fleet-cpu"}, cpu)
        log("workers ready")
        gpu_job, _ = run_job(client, small, args.model, "gpu", args.batch_size, raw=True)
        report["pinning"] = pinning(client, names)
        cpu_job, _ = run_job(client, small, args.model, "cpu", args.batch_size, raw=True)
        g, c = outputs(client, gpu_job), outputs(client, cpu_job)
        rel = np.linalg.norm(g - c, axis=1) / np.linalg.norm(c, axis=1)
        report["gpu_vs_cpu"] = {"images": len(rel), "max_relative_l2": float(rel.max()),
                                "mean_relative_l2": float(rel.mean()),
                                "max_abs_diff": float(np.abs(g - c).max()),
                                "top1_agreement": float((g.argmax(1) == c.argmax(1)).mean()),
                                "within_1e-3": bool(rel.max() <= 1e-3)}
        log(f"GPU vs CPU: {report['gpu_vs_cpu']}")
        _, report["all_gpus_images_per_s"] = run_job(client, big, args.model, "gpu", args.batch_size)
        log(f"all GPUs: {report['all_gpus_images_per_s']:.1f} img/s")
    finally:
        stop(cpu)
        report["gpu_all_exit_code"] = stop(fleet)
    # 3: one GPU
    one = start_workers(f"gpu:{gpus[0]}", "fleet-one", gpu_args, work / "gpu-one.log")
    try:
        wait_ready(client, {"fleet-one"}, one)
        _, report["one_gpu_images_per_s"] = run_job(client, big, args.model, "gpu", args.batch_size)
    finally:
        stop(one)
    report["scaling"] = report["all_gpus_images_per_s"] / report["one_gpu_images_per_s"]
    log(f"1 GPU {report['one_gpu_images_per_s']:.1f} img/s; scaling x{report['scaling']:.2f}")
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
