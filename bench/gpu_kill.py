#!/usr/bin/env python3
"""SIGKILL one of the fleet's GPU workers mid-job; the job must still end with one result per image.

    python3 bench/gpu_kill.py --images 20000 --kill gpuA [--model resnet50 --precision fp16] --output kill.json

Needs live workers (``trtbatch worker --device gpu:N --name ...``), the one named by ``--kill``
among them, and the model with its ONNX forms. Prints one JSON document: images/s, when the kill
happened, which workers served how many images, batches delivered more than once, and the checks
(every index exactly once, none failed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import image_folder
from common import fleet, keys
from common.config import Settings
from producer import jobs, submit
from producer.client import Client


def kill_worker(client: Client, name: str) -> int:
    """SIGKILL the worker's whole process group (launcher and pool processes); returns its pid."""
    found = [w for w in client.live_workers() if w.name == name]
    if not found:
        raise SystemExit(f"no live worker {name!r}: {[w.name for w in client.live_workers()]}")
    pid = found[0].pid
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    return pid


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = Client(Settings.from_env())
    folder = image_folder(client.settings.cache_dir / "bench", args.images, args.image_size)
    workers = sorted(w.name for w in client.live_workers())
    opts = submit.SubmitOptions(paths=(str(folder),), model=args.model, precision=args.precision,
                                engine="onnxruntime", batch_size=args.batch_size)
    started = time.time()
    job_id = submit.submit(client, opts)
    while client.store.status(job_id, reasons=0).finished < args.kill_at * args.images:
        time.sleep(0.05)
    killed_at = client.store.status(job_id, reasons=0).finished
    pid = kill_worker(client, args.kill)
    final = jobs.wait(client, job_id, timeout_s=900)
    records = list(client.store.iter_results(job_id))
    indices = Counter(r.index for r in records)
    deliveries = {int(k): int(v) for k, v in client.conn.hgetall(keys.job_attempts(job_id)).items()
                  if b":" not in k}
    return {
        "job_id": job_id, "model": args.model, "precision": args.precision, "batch_size": args.batch_size,
        "images": args.images, "image_size": args.image_size, "workers": workers, "killed": args.kill,
        "killed_pid": pid, "killed_after_images": killed_at, "state": final.state,
        "seconds": round((final.job.finished_s or time.time()) - started, 3),
        "images_per_s": round(args.images / ((final.job.finished_s or time.time()) - started), 1),
        "records": len(records), "indices_exactly_once": sorted(indices) == list(range(args.images))
        and max(indices.values()) == 1, "failed": final.failed,
        "served_by": dict(Counter(r.worker for r in records)),
        "batches_delivered_more_than_once": sum(1 for n in deliveries.values() if n > 1),
        "live_after": sorted(w.name for w in fleet.live_workers(client.conn, client.settings.heartbeat_ttl_s)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--image-size", default="500x375")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--kill", required=True, help="Name of the worker to SIGKILL.")
    parser.add_argument("--kill-at", type=float, default=0.3, help="Kill once this share of images is done.")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=1, sort_keys=True)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
