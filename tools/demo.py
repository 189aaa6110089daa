"""``trtbatch demo``: the whole path once, on this machine.

Makes the digits model if missing, starts a local CPU worker, submits the held-out digits (with
their labels, through a CSV manifest), waits, prints predictions and the accuracy, and stops the
worker it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import TrtbatchError
from producer import jobs, submit
from producer.client import Client

WORKER_START_TIMEOUT_S = 180


def ensure_digits(client: Client, out: Callable[[str], None]) -> Path:
    """The digits model in the repository and its held-out images on disk; returns labels.csv."""
    from tools import modelmake

    images = client.settings.state_dir / "demo" / "digits"
    labels = images / "labels.csv"
    if not client.repo.exists("digits"):
        out("training the digits model (scikit-learn digits, ~20 s)...")
        result = modelmake.make_digits(client.repo, "digits", export_dir=images)
        out(f"  held-out accuracy {result['held_out_accuracy']:.4f} in {result['seconds']:.1f}s")
    elif not labels.exists():
        modelmake.export_images(modelmake.digits_data(), images)
    return labels


def start_worker(client: Client, name: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if client.settings.uses_embedded_redis:
        client.url  # noqa: B018  # make sure the embedded server runs before the worker looks
    log = open(client.settings.state_dir / "demo" / "worker.log", "w")  # noqa: SIM115  # kept by the child
    return subprocess.Popen([sys.executable, "-m", "workers.process.main", "--device", "cpu", "--name", name,
                             "--loglevel", "WARNING"], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_worker(client: Client, name: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrtbatchError(f"the demo worker exited with {proc.returncode}; see "
                                f"{client.settings.state_dir / 'demo' / 'worker.log'}")
        if any(w.name == name and w.state == "ready" for w in client.live_workers()):
            return
        time.sleep(0.3)
    raise TrtbatchError(f"the demo worker did not come up within {WORKER_START_TIMEOUT_S}s")


def stop_worker(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(client: Client, out: Callable[[str], None], on_progress: Callable | None = None,
             precision: str = "fp32", examples: int = 8) -> dict[str, Any]:
    labels = ensure_digits(client, out)
    name = f"demo-{os.getpid()}@cpu"
    out("starting a local CPU worker...")
    proc = start_worker(client, name)
    try:
        wait_for_worker(client, name, proc)
        opts = submit.SubmitOptions(paths=(str(labels),), model="digits", precision=precision, target="cpu")
        job_id = submit.submit(client, opts)
        out(f"submitted job {job_id}")
        final = jobs.wait(client, job_id, on_progress=on_progress)
    finally:
        stop_worker(proc)
    records = list(client.store.iter_results(job_id))
    acc = jobs.accuracy(client, job_id)
    return {"job_id": job_id, "state": final.state, "done": final.done, "failed": final.failed,
            "accuracy": acc, "examples": [r.as_row() for r in records[:examples]], "worker": name}
