"""Fleet operations against real workers started through `trtbatch worker` (the launcher):
warm start, the fleet view, heartbeat expiry, the health check, drain on SIGTERM, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from common import fleet, keys
from common.config import Settings
from common.schemas import BatchTimings
from producer import jobs, submit
from producer.client import Client
from tests.helpers import REPO_ROOT, RedisServer, worker_env

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-c", "from cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def fleet_env(tmp_path: Path, digits, session_dirs):
    """A private redis-server and environment, so these workers see only this test's jobs."""
    server = RedisServer(Path(f"/tmp/tb-fleet-{os.getpid()}-{time.monotonic_ns()}")).start()
    env = worker_env({"TRTBATCH_REDIS_URL": server.url, "TRTBATCH_MODEL_REPO": str(digits["repo"]),
                      "TRTBATCH_CACHE_DIR": str(session_dirs["cache"]), "TRTBATCH_STATE_DIR": str(tmp_path / "state"),
                      "TRTBATCH_HEARTBEAT_TTL_S": "4", "TRTBATCH_HEARTBEAT_INTERVAL_S": "1"})
    client = Client(Settings.from_env({k: v for k, v in env.items() if k.startswith("TRTBATCH_")}))
    yield env, client, tmp_path
    client.close()
    server.stop()


def cli(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout)


def launch(env, tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115  # owned by the child
    return subprocess.Popen([*CLI, "worker", "--device", "cpu", "--threads", "1", "--name", name, *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ready(client: Client, name: str):
    return next((w for w in client.live_workers() if w.name == name and w.state == "ready"), None)


def finish_on(env, tmp_path: Path, client: Client, job_id: str, name: str) -> None:
    """Start worker ``name``, let it finish the digits job, stop it; the job must be done, all 540 ok."""
    worker = launch(env, tmp_path, name)
    try:
        final = jobs.wait(client, job_id, timeout_s=300)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(120)
    assert final.state == "done" and final.done == 540 and final.failed == 0


def test_warm_start_fleet_view_check_and_expiry(fleet_env, digits):
    env, client, tmp = fleet_env
    port = free_port()
    job_id = submit.submit(client, submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits"))
    proc = launch(env, tmp, "fleet-a", "--warm", "digits:fp32:16", "--metrics-port", str(port))
    try:
        info = wait_for(lambda: ready(client, "fleet-a"), 180, "the warm worker")
        final = jobs.wait(client, job_id, timeout_s=180)
        assert final.state == "done" and final.done == 540
        # warm start: every slot built its predictor and reported the time before taking a batch
        slots = info.slots
        assert len(slots) == 2
        for slot in slots:
            assert slot.warm[0]["build_s"] > 0 and slot.warm[0]["precision"] == "fp32"
        first_batch = min(BatchTimings.decode(v).started_s for v in client.conn.hvals(keys.job_timings(job_id)))
        assert first_batch >= max(s.ready_s for s in slots)
        # the fleet view
        out = cli(env, "workers", "--json")
        assert out.returncode == 0, out.stderr
        (row,) = [w for w in json.loads(out.stdout) if w["name"] == "fleet-a"]
        assert row["host"] == socket.gethostname() and row["pid"] > 0 and row["device"] == "cpu"
        assert row["cpu_threads"] == 1 and "paddle:cpu/fp32" in row["capabilities"]
        assert "paddle:cpu/int8" in row["capabilities"] and "onnxruntime:cpu/int8" in row["capabilities"]
        assert any(p["precision"] == "fp32" for s in row["slots"] for p in s["predictors"])
        assert row["images_per_s"] > 0 and row["metrics_port"] == port
        text = cli(env, "workers").stdout
        assert "fleet-a" in text and "no TensorRT" in text
        # health check passes while it runs
        check = cli(env, "worker", "--check")
        assert check.returncode == 0, check.stdout + check.stderr
        # metrics
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        total = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                    if line.startswith("trtbatch_images_total{") and 'outcome="ok"' in line)
        assert total == 540
        for name in ("trtbatch_batch_seconds_bucket", "trtbatch_infer_seconds_count",
                     "trtbatch_predictor_build_seconds_count", "trtbatch_queue_depth{", "trtbatch_batches_total{"):
            assert name in body, name
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # a killed worker leaves the fleet view within heartbeat_ttl_s (4 s here) and fails the check
    started = time.monotonic()
    wait_for(lambda: all(w.name != "fleet-a" for w in client.live_workers()), 10, "the dead worker to disappear")
    assert time.monotonic() - started <= 5.5
    check = cli(env, "worker", "--check")
    # the whole launch was killed: its record is dropped (nobody will restart it) and the check fails
    assert check.returncode == 1 and "no worker is running" in check.stderr, check.stderr


def test_sigterm_drains_without_losing_or_repeating_work(fleet_env, digits):
    env, client, tmp = fleet_env
    proc = launch(env, tmp, "drain-a")
    wait_for(lambda: ready(client, "drain-a"), 180, "the worker")
    opts = submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits", batch_size=4)
    job_id = submit.submit(client, opts)
    wait_for(lambda: client.store.status(job_id).done >= 40, 120, "some progress")
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, as systemd and terminals do
    assert proc.wait(120) == 0  # warm shutdown: current batches finish, then exit 0
    partial = client.store.status(job_id)
    assert 0 < partial.done < 540
    assert all(w.name != "drain-a" for w in fleet.live_workers(client.conn, 4))
    finish_on(env, tmp, client, job_id, "drain-b")
    deliveries = {k.decode(): int(v) for k, v in client.conn.hgetall(keys.job_attempts(job_id)).items()
                  if b":" not in k}
    # Every batch was delivered, and ran once: a second delivery finds its batch written (the payload
    # is gone) and runs nothing. Once in several full-suite runs on the loaded 2-core machine, the
    # draining worker handed back at exit ("Restoring 2 unacknowledged message(s)") a batch it had
    # written whose late ack had not gone out, so a batch may show two deliveries - never more.
    assert len(deliveries) == 135 and set(deliveries.values()) <= {1, 2}
    assert sum(v == 2 for v in deliveries.values()) <= 2, deliveries
    workers = {r.worker for r in client.store.iter_results(job_id)}
    assert workers == {"drain-a", "drain-b"}


def test_thread_slots_serve_a_job_and_drain_on_sigterm(fleet_env, digits):
    """slot_pool = threads: two slots in one process (Paddle predictors in threads), each taking
    batches; SIGTERM mid-job is still a warm shutdown (Paddle's own SIGTERM handler would abort the
    process), and the job finishes on another worker with every image once."""
    env, client, tmp = fleet_env
    # metrics on: the slots share one set of Prometheus metrics (a second set is refused by the registry)
    proc = launch({**env, "TRTBATCH_SLOT_POOL": "threads", "TRTBATCH_METRICS_PORT": str(free_port())}, tmp, "thr-a",
                  "--slots", "2")
    worker = wait_for(lambda: ready(client, "thr-a"), 180, "the thread-slot worker")
    slots = [fleet.slot_state(client.conn, worker.name, i) for i in range(2)]
    assert all(s is not None and s.state == "ready" for s in slots)
    assert len({s.pid for s in slots}) == 1  # one process
    job_id = submit.submit(client, submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits",
                                                        batch_size=4))
    wait_for(lambda: client.store.status(job_id).done >= 60, 120, "some progress")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(120) == 0
    log = (tmp / "thr-a.log").read_text()
    assert "Warm shutdown" in log and "Aborted at" not in log, log[-3000:]
    timings = [BatchTimings.decode(v) for v in client.conn.hvals(keys.job_timings(job_id))]
    assert {t.slot for t in timings} == {0, 1} and len({t.pid for t in timings}) == 1
    finish_on(env, tmp, client, job_id, "thr-b")
    indices = [r.index for r in client.store.iter_results(job_id)]
    assert sorted(indices) == list(range(540))
