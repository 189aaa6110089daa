"""Fault injection against the real thing: a private redis-server per test, real worker
subprocesses, real Paddle, and the faults a fleet meets - workers SIGKILLed mid-batch, Redis
restarted under load, a producer killed mid-submit, a poison payload, a model corrupted in Redis,
a spec the node cannot build, a batch that kills its process every time.

Each test asserts the guarantee (exactly one record per image, nothing lost, bounded recovery,
bounded retries, a readable reason), not merely that the job finished. SIGTERM to a worker
mid-job (drain without losing or repeating work) is covered by
``tests/integration/test_fleet.py::test_sigterm_drains_without_losing_or_repeating_work``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib  # noqa: F401  # before paddle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from common import keys
from common.celery_app import INFER_TASK, RESTORE_MUTEX_EXPIRE_S
from common.config import Settings
from common.schemas import BatchTimings, ResultRecord
from producer import jobs, submit
from producer.client import Client
from tests.helpers import (
    REPO_ROOT,
    RedisServer,
    deliveries,
    free_port,
    kill_group,
    repeated_manifest,
    serving,
    slot_states,
    spawn_worker,
    unacked_batches,
    wait_until,
    worker_env,
    written_batches,
)
from workers.process.orphans import message_batch

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-c", "from cli import main; main()"]


@dataclass
class Faults:
    """One test's private world: a redis-server, settings, a client, worker subprocesses."""

    server: RedisServer
    env: dict[str, str]
    client: Client
    tmp: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conn(self):
        return self.client.conn

    def worker(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        proc = spawn_worker({**self.env, **env}, name, self.tmp / f"{name}.log", "--slots", "2", *args)
        self.procs.append(proc)
        return proc

    def wait_serving(self, name: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
        def check():
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited {proc.returncode}:\n{self.log(name)}")
            return serving(self.conn, name, proc.pid)

        wait_until(check, timeout_s, f"worker {name} (pid {proc.pid}) to consume", 0.1)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], env=env or self.env, capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=timeout)

    def cli_bg(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([*CLI, *args], env=env or self.env, stdout=open(self.tmp / f"{name}.out", "wb"),  # noqa: SIM115
                                stderr=open(self.tmp / f"{name}.err", "wb"), cwd=REPO_ROOT,  # noqa: SIM115
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def records(self, job_id: str) -> dict[int, ResultRecord]:
        raw = self.conn.hgetall(keys.job_results(job_id))
        return {int(k): ResultRecord.decode(v) for k, v in raw.items()}


@pytest.fixture()
def faults(digits, session_dirs, tmp_path: Path) -> Iterator[Callable[..., Faults]]:
    """Factory: ``faults(redis_args=[...], port=0, TASK_MAX_RETRIES="2", ...)`` starts a private
    redis-server (short socket path under /tmp) and returns the test's world; everything it
    started is killed at the end. Logs stay in the test's ``tmp_path``."""
    made: list[Faults] = []

    def make(redis_args: list[str] | None = None, port: int = 0, **settings: str) -> Faults:
        root = Path(f"/tmp/tb-faults-{os.getpid()}-{time.monotonic_ns()}")
        server = RedisServer(root, extra=redis_args, port=port).start()
        base = {"TRTBATCH_REDIS_URL": server.url, "TRTBATCH_MODEL_REPO": str(digits["repo"]),
                "TRTBATCH_CACHE_DIR": str(session_dirs["cache"]), "TRTBATCH_STATE_DIR": str(tmp_path / "state"),
                "TRTBATCH_HEARTBEAT_TTL_S": "4", "TRTBATCH_HEARTBEAT_INTERVAL_S": "1"}
        base.update({f"TRTBATCH_{k}": v for k, v in settings.items()})
        env = worker_env(base)
        client = Client(Settings.from_env({k: v for k, v in env.items() if k.startswith("TRTBATCH_")}))
        fx = Faults(server, env, client, tmp_path)
        made.append(fx)
        return fx

    yield make
    for fx in made:
        for proc in fx.procs:
            kill_group(proc)
        fx.client.close()
        fx.server.stop()
        shutil.copy(fx.server.dir / "redis.log", fx.tmp / "redis.log")
        shutil.rmtree(fx.server.dir, ignore_errors=True)


def assert_exactly_once(fx: Faults, job_id: str, n: int, final) -> dict[int, ResultRecord]:
    """The job has finished and holds one record per image 0..n-1, each naming its own index: "done"
    if any image succeeded, "failed" if none did (common/store.py)."""
    assert final.state == ("done" if final.done else "failed"), final.as_dict()
    assert final.n_images == n
    records = fx.records(job_id)
    assert sorted(records) == list(range(n))
    assert all(rec.index == i for i, rec in records.items())
    assert final.done + final.failed == n  # the counters counted every record once
    return records


# -- 1. SIGKILL chaos ---------------------------------------------------------------------------
KILLS = 20


def recovery_bound_s(settings: Settings) -> float:
    """How long after a kill a batch it held may take to start again, from the settings: the slower
    of its two ways back, plus the batch ahead of it on the slot that takes it (``worst_batch_s``).

    * unacked (kombu's visibility sweep): its lease was renewed at the kill at the latest, so it is
      visible ``visibility_timeout_s`` later and put back at the head of the queue by the next sweep
      of a live worker (every ``restore_interval_s``), which may first wait out the sweep mutex the
      killed worker held (``RESTORE_MUTEX_EXPIRE_S``);
    * lost in transit (the orphan sweep of workers/process/orphans.py, every ``visibility_timeout_s
      / 5``): noted by the first sweep after the kill, which may wait one interval for the lock the
      killed worker held, confirmed ``visibility_timeout_s / 2`` later at the next sweep, and sent
      to the head of the queue.

    Neither waits behind the queue (max_inflight_batches batches: 15-25 s on a busy 2-core machine
    when resent orphans went to its tail), nor for a restarting worker's pool (the consumer starts
    once every slot is ready, workers/process/warm.py)."""
    unacked = settings.visibility_timeout_s + settings.restore_interval_s + RESTORE_MUTEX_EXPIRE_S
    sweep_s = max(1.0, settings.visibility_timeout_s / 5)
    lost = sweep_s + sweep_s + settings.visibility_timeout_s / 2 + sweep_s
    return max(unacked, lost)


def worst_batch_s(fx: Faults, job_id: str) -> float:
    """The longest a batch of the job ran on a slot (fetch to postprocess), as its timings say."""
    timings = [BatchTimings.decode(raw) for raw in fx.conn.hvals(keys.job_timings(job_id))]
    return max((t.postprocessed_s - t.started_s for t in timings), default=0.0)


class LostBatches:
    """For each kill: the batches delivered but not written at that moment - kombu's unacked messages
    of the job, and sent batches whose message is nowhere (taken off the queue by the killed worker
    before kombu recorded it as unacked) - and for each, when it was *back*: written (it was the
    survivor's) or delivered again (its ``attempts`` count went up). A batch still pending from an
    earlier kill is measured from that kill."""

    def __init__(self, conn, job_id: str, queue: str) -> None:
        self.conn, self.job_id, self.queue = conn, job_id, queue
        self.kills: list[dict] = []
        self.pending: list[tuple[int, int, int]] = []  # (kill no, batch, deliveries at kill)

    def _batches(self, messages: list[dict]) -> set[int]:
        found = {message_batch(m) for m in messages}
        return {b for jb in found if jb and jb[0] == self.job_id for b in [jb[1]]}

    def snapshot(self, victim: str, t_kill: float) -> dict:
        pipe = self.conn.pipeline(transaction=True)  # one consistent view of queue and unacked
        pipe.lrange(keys.broker_queue(self.queue), 0, -1)
        pipe.hvals(keys.BROKER_UNACKED)
        pipe.get(keys.job_progress(self.job_id))
        queued, unacked, progress = pipe.execute()
        cursor = json.loads(progress)["batches"] if progress else 0
        in_unacked = self._batches([json.loads(raw)[0] for raw in unacked])
        queued_batches = self._batches([json.loads(raw) for raw in queued])
        with_payload = {int(k.rsplit(b":", 1)[1])
                        for k in self.conn.scan_iter(match=keys.payload(self.job_id, "*"))}  # type: ignore[arg-type]
        vanished = {b for b in with_payload if b < cursor} - queued_batches - in_unacked
        already = {b for _, b, _ in self.pending}
        batches = sorted((in_unacked | vanished) - already)
        pipe = self.conn.pipeline(transaction=False)
        pipe.hmget(keys.job_attempts(self.job_id), batches or ["-"])
        pipe.hmget(keys.job_batches(self.job_id), batches or ["-"])
        counts, written = pipe.execute()
        kill = {"victim": victim, "t": t_kill, "in_flight": {}, "back_s": {}, "vanished": set()}
        for b, count, w in zip(batches, counts, written, strict=False):
            if w is None:
                kill["in_flight"][b] = int(count or 0)
                if b in vanished:
                    kill["vanished"].add(b)
                self.pending.append((len(self.kills), b, int(count or 0)))
        self.kills.append(kill)
        return kill

    def poll(self) -> None:
        if not self.pending:
            return
        batches = [b for _, b, _ in self.pending]
        pipe = self.conn.pipeline(transaction=False)
        pipe.hmget(keys.job_attempts(self.job_id), batches)
        pipe.hmget(keys.job_batches(self.job_id), batches)
        counts, written = pipe.execute()
        now = time.monotonic()
        still = []
        for (k, b, before), count, w in zip(self.pending, counts, written, strict=True):
            kill = self.kills[k]
            if int(count or 0) > before or w is not None:
                kill["back_s"][b] = now - kill["t"]
            else:
                still.append((k, b, before))
        self.pending = still


def queued_batches(fx: Faults, job_id: str) -> list[int]:
    """Batch numbers of the job's messages waiting in its queue."""
    out = []
    for raw in fx.conn.lrange(keys.broker_queue(fx.client.store.meta(job_id)["queue"]), 0, -1):
        args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
        if args[0].get("job_id") == job_id:
            out.append(args[0]["batch_no"])
    return out


def wait_all_acked(fx: Faults, job_id: str, timeout_s: float = 60) -> None:
    """Until no message of the job is queued or unacked. A retry is published before the message it
    retries is acked, so once this holds no retry of the job exists, and delivery counts are final."""
    def settled() -> bool:
        unacked = {jb[0] for jb in unacked_batches(fx.conn).values()}
        return not queued_batches(fx, job_id) and job_id not in unacked

    wait_until(settled, timeout_s, f"every message of job {job_id} to be acked")


def missing_report(fx: Faults, job_id: str) -> str:
    """Where the unwritten batches of a stuck job are: queued, unacked, or nowhere."""
    meta = fx.client.store.meta(job_id)
    written = written_batches(fx.conn, job_id)
    counts = deliveries(fx.conn, job_id)
    unacked = {b for j, b in unacked_batches(fx.conn).values() if j == job_id}
    queued = set(queued_batches(fx, job_id))
    missing = [b for b in range(meta.get("n_batches", 0)) if b not in written]
    rows = [f"batch {b}: deliveries={counts.get(b, 0)} unacked={b in unacked} queued={b in queued} "
            f"payload={bool(fx.conn.exists(keys.payload(job_id, b)))}" for b in missing]
    return f"{len(missing)} batches never written:\n" + "\n".join(rows[:20])


def running_batches_of(fx: Faults, procs: dict[str, subprocess.Popen], name: str, job_id: str) -> set[int]:
    """Batches of the job this very worker process's pool is running now (its slots' current batch)."""
    proc = procs[name]
    if not serving(fx.conn, name, proc.pid):
        return set()
    try:
        children = {c.pid for c in psutil.Process(proc.pid).children()}
    except psutil.Error:
        return set()
    current = [s["current_batch"].rsplit(":", 1) for s in slot_states(fx.conn, name).values()
               if s.get("current_batch") and s.get("pid") in children]
    return {int(batch) for job, batch in current if job == job_id}


#: One chaos job: 4,320 images in 1,080 batches of 4 - a few kill cycles on an idle machine, a few
#: minutes on a busy one. A job lasts as long as the machine makes it; the kills go on over as many
#: jobs as it takes (one after another), so neither a fast machine runs out of work before the last
#: kill nor a slow one leaves an hour of work after it.
CHAOS_COPIES = 8
CHAOS_DRAIN_S = 900


@dataclass
class ChaosJobs:
    """The jobs of the chaos test, each with its tracker of lost batches; the last one is current."""

    fx: Faults
    manifest: Path
    runs: list[tuple[str, LostBatches]] = field(default_factory=list)

    def start(self) -> None:
        job_id = submit.new_job_id()
        opts = submit.SubmitOptions(paths=(str(self.manifest),), model="digits", batch_size=4)
        threading.Thread(target=submit.submit, args=(self.fx.client, opts), kwargs={"job_id": job_id},
                         daemon=True).start()
        wait_until(lambda: self.fx.conn.exists(keys.job(job_id)), 60, "the job to exist", 0.05)
        self.runs.append((job_id, LostBatches(self.fx.conn, job_id, self.fx.client.store.meta(job_id)["queue"])))

    @property
    def current(self) -> tuple[str, LostBatches]:
        return self.runs[-1]

    @property
    def kills(self) -> list[dict]:
        return [kill for _, lost in self.runs for kill in lost.kills]

    def poll(self) -> None:
        """Record which killed batches came back; start the next job once the current one is done."""
        for _, lost in self.runs:
            lost.poll()
        if self.fx.client.store.job_state(self.current[0]) == "done":
            self.start()

    def wait(self, cond, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while not (value := cond()):
            self.poll()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)
        return value

    def drain(self) -> None:
        """Until every job is done and every killed batch came back."""
        def settled() -> bool:
            for _, lost in self.runs:
                lost.poll()
            return all(not lost.pending and self.fx.client.store.job_state(job) == "done" for job, lost in self.runs)

        with contextlib.suppress(AssertionError):
            wait_until(settled, CHAOS_DRAIN_S, "every chaos job to finish", 0.1)
        for job_id, _ in self.runs:
            assert self.fx.client.store.job_state(job_id) == "done", missing_report(self.fx, job_id)


def print_kills(lost: LostBatches) -> None:
    for k, kill in enumerate(lost.kills):
        print(f"kill {k} {kill['victim']}: running {sorted(kill['running'])}, in flight {sorted(kill['in_flight'])} "
              f"(no message: {sorted(kill['vanished'])}), back after "
              f"{sorted(round(s, 1) for s in kill['back_s'].values())}")


def check_chaos_job(fx: Faults, job_id: str, n: int) -> dict[str, float]:
    """One job of the chaos test: exactly one ok record per image, each batch written once as done."""
    final = jobs.wait(fx.client, job_id, timeout_s=5)
    records = assert_exactly_once(fx, job_id, n, final)
    assert final.failed == 0 and all(r.ok for r in records.values())
    n_batches = final.meta["n_batches"]
    assert written_batches(fx.conn, job_id) == dict.fromkeys(range(n_batches), "done")
    delivered = deliveries(fx.conn, job_id)
    assert sorted(delivered) == list(range(n_batches))
    return {"batches": n_batches, "extra_deliveries": sum(delivered.values()) - n_batches,
            "worst_batch_s": worst_batch_s(fx, job_id)}


@pytest.mark.slow
def test_sigkill_chaos_loses_and_repeats_nothing(faults, digits):
    """Two CPU workers; 20 times, SIGKILL one worker's whole process group (main + pool) while it
    holds a batch, and restart it as a supervisor would. Every batch in flight at a kill must be
    delivered again within ``recovery_bound_s`` (13 s with the default settings) plus one batch, also
    on a busy machine, and every job must end with exactly one ok record per image."""
    fx = faults()
    n = repeated_manifest(fx.tmp / "chaos.csv", digits["labels"], CHAOS_COPIES)
    names = ("chaos-a", "chaos-b")
    procs = {name: fx.worker(name) for name in names}
    for name in names:
        fx.wait_serving(name, procs[name])
    started = time.monotonic()
    chaos = ChaosJobs(fx, fx.tmp / "chaos.csv")
    chaos.start()
    for k in range(KILLS):
        victim, other = names[k % 2], names[1 - k % 2]
        # Each kill waits until every batch the earlier kills lost is back, so each recovery is measured
        # on its own: a kill of the worker that was about to restore a lost batch (its visibility
        # sweep) restarts that batch's wait - once in five full-suite runs here, 18.5 s for one batch.
        running = chaos.wait(lambda v=victim, o=other: not any(lost.pending for _, lost in chaos.runs)
                             and serving(fx.conn, o, procs[o].pid)
                             and running_batches_of(fx, procs, v, chaos.current[0]),
                             120, f"{victim} to run a batch while {other} consumes")
        t_kill = time.monotonic()
        kill_group(procs[victim])
        lost = chaos.current[1]
        lost.poll()  # settle what came back before this kill, then measure what this kill lost
        lost.snapshot(victim, t_kill)["running"] = running
        procs[victim] = fx.worker(victim)  # restart it, as the supervisor would
    kill_phase_s = time.monotonic() - started
    chaos.drain()
    for _, lost in chaos.runs:
        print_kills(lost)
    per_job = [check_chaos_job(fx, job_id, n) for job_id, _ in chaos.runs]
    back = [s for kill in chaos.kills for s in kill["back_s"].values()]
    bound = recovery_bound_s(fx.client.settings) + max(j["worst_batch_s"] for j in per_job)
    summary = {"jobs": len(per_job), "images": n * len(per_job), "batches": sum(j["batches"] for j in per_job),
               "kills": len(chaos.kills), "in_flight": sum(len(k["in_flight"]) for k in chaos.kills),
               "running_at_kill": sum(len(k["running"]) for k in chaos.kills),
               "lost_in_transit": sum(len(k["vanished"]) for k in chaos.kills),
               "worst_back_s": round(max(back, default=0.0), 2), "bound_s": round(bound, 2),
               "extra_deliveries": sum(j["extra_deliveries"] for j in per_job),
               "kill_phase_s": round(kill_phase_s, 1), "elapsed_s": round(time.monotonic() - started, 1)}
    print("chaos:", json.dumps(summary))
    assert len(chaos.kills) == KILLS and not any(lost.pending for _, lost in chaos.runs)
    assert all(kill["running"] for kill in chaos.kills)  # every kill hit batches being run
    assert summary["worst_back_s"] <= bound, summary


# -- 3. Redis restart mid-job -------------------------------------------------------------------
AOF = ["--appendonly", "yes", "--appendfsync", "everysec"]


@pytest.mark.slow
def test_redis_restart_mid_job(faults, digits):
    """Redis (AOF, unix socket + TCP) is stopped with SIGTERM in the middle of a job while two workers
    (socket) and a ``trtbatch submit --wait`` producer (TCP) run, and restarted 3 s later with the same
    directory and config. Everyone must reconnect alone, and the job must end with one ok record per
    image."""
    port = free_port()
    fx = faults(redis_args=AOF, port=port)
    assert fx.conn.config_get("appendonly")["appendonly"] == "yes"
    n = repeated_manifest(fx.tmp / "big.csv", digits["labels"], 24)
    names = ("restart-a", "restart-b")
    procs = {name: fx.worker(name) for name in names}
    for name in names:
        fx.wait_serving(name, procs[name])
    # TCP for the producer; no backpressure, so that it is busy sending (files, payloads, messages)
    # when Redis goes away, not waiting for room
    producer_env = {**fx.env, "TRTBATCH_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                    "TRTBATCH_MAX_INFLIGHT_BATCHES": "100000"}
    producer = fx.cli_bg("producer", "submit", str(fx.tmp / "big.csv"), "-m", "digits", "-b", "4", "--wait",
                         "--json", env=producer_env)
    job_id = wait_until(lambda: next(iter(fx.conn.zrange(keys.JOBS, 0, 0)), b"").decode(), 60, "the job", 0.05)
    before = wait_until(lambda: (m := fx.client.store.meta(job_id)) and m["done"] >= 40 and m, 120,
                        "the workers to make progress", 0.01)
    fx.server.stop()  # SIGTERM: Redis writes its AOF and exits
    assert not before["submit_complete"] and 0 < before["done"] < n  # producer and workers mid-job
    time.sleep(3)  # the outage
    for proc in (producer, *procs.values()):
        assert proc.poll() is None, "a process exited while Redis was down"
    fx.server.start()
    after = fx.client.store.meta(job_id)
    assert after["done"] >= before["done"] and after["n_enqueued"] >= before["n_enqueued"]  # the AOF kept it
    assert producer.wait(180) == 0, (fx.tmp / "producer.err").read_text()[-3000:]
    report = json.loads((fx.tmp / "producer.out").read_text())
    assert report["state"] == "done" and report["done"] == n and report["failed"] == 0, report
    final = fx.client.store.status(job_id)
    records = assert_exactly_once(fx, job_id, n, final)
    assert all(r.ok for r in records.values())
    for name in names:  # both workers are back in the fleet, as the same processes
        assert procs[name].poll() is None
        wait_until(lambda nm=name: serving(fx.conn, nm, procs[nm].pid), 30, f"{name} to heartbeat again")
    print("redis restart:", json.dumps({"images": n, "done_at_stop": before["done"],
                                        "sent_at_stop": before["n_enqueued"],
                                        "submit_complete_at_stop": before["submit_complete"],
                                        "extra_deliveries": sum(deliveries(fx.conn, job_id).values())
                                        - final.meta["n_batches"]}))


def test_publishing_rides_out_a_redis_restart(faults):
    """Sending a task while Redis restarts waits for it (Celery's default publish retry gave up after
    ~0.6 s: a producer caught mid-send by a Redis restart crashed)."""
    fx = faults(redis_args=AOF)
    app, queue = fx.client.app, "trtbatch.any.fp32"
    app.send_task(INFER_TASK, args=[{"job_id": "j", "batch_no": 0}], queue=queue)  # a pooled connection
    fx.server.stop()
    restart = threading.Timer(2.0, fx.server.start)
    restart.start()
    started = time.monotonic()
    try:
        app.send_task(INFER_TASK, args=[{"job_id": "j", "batch_no": 1}], queue=queue)
    finally:
        restart.join()
    assert time.monotonic() - started >= 1.5  # it did wait for the restart
    assert sorted(json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]["batch_no"]
                  for m in fx.conn.lrange(keys.broker_queue(queue), 0, -1)) == [0, 1]


# -- 4. Producer killed mid-submit --------------------------------------------------------------
@pytest.mark.slow
def test_producer_killed_mid_submit_then_resumed(faults, digits):
    """SIGKILL a ``trtbatch submit`` after some batches went out; ``trtbatch submit --resume JOB`` sends
    the rest. Exactly one record per image, and only the round trip cut by the kill may be sent twice:
    the producer records its cursor after each round trip of ``BATCHES_PER_ROUND_TRIP`` batches (past
    the first three, of 1, 2 and 4: long gone a quarter into the job), so
    every batch below the cursor was sent once by the first producer, every batch from cursor +
    BATCHES_PER_ROUND_TRIP on once by the resume, and a batch in between at most twice - whose
    second run then finds its records written and changes nothing."""
    fx = faults()
    n = repeated_manifest(fx.tmp / "big.csv", digits["labels"], 4)
    proc = fx.worker("resume-a")
    fx.wait_serving("resume-a", proc)
    producer = fx.cli_bg("producer", "submit", str(fx.tmp / "big.csv"), "-m", "digits", "-b", "4")
    job_id = wait_until(lambda: next(iter(fx.conn.zrange(keys.JOBS, 0, 0)), b"").decode(), 60, "the job", 0.05)
    wait_until(lambda: int(fx.conn.hget(keys.job(job_id), "n_enqueued") or 0) >= n // 4, 120,
               "a quarter of the job to be sent", 0.02)

    def mid_round_trip() -> bool:
        """The producer has stored the payloads of its next round trip and sent at least one of their
        messages, and its cursor has not moved past them yet."""
        cursor = (fx.client.store.progress(job_id) or {"batches": 0})["batches"]
        last = keys.payload(job_id, cursor + submit.BATCHES_PER_ROUND_TRIP - 1)
        if not fx.conn.exists(last):
            return False
        sent = fx.conn.hexists(keys.job_attempts(job_id), cursor) or cursor in queued_batches(fx, job_id)
        return sent and fx.client.store.progress(job_id)["batches"] == cursor

    wait_until(mid_round_trip, 120, "the producer to be in the middle of a round trip", 0.001)
    kill_group(producer)
    cursor = fx.client.store.progress(job_id)["batches"]
    meta = fx.client.store.meta(job_id)
    # "running" once a worker has written a batch the producer sent before it died
    assert not meta["submit_complete"] and meta["state"] in ("submitting", "running")
    assert n // 4 <= cursor * 4 < n
    out = fx.cli("submit", "--resume", job_id, "--wait", "--json", "--timeout", "300", timeout=360)
    assert out.returncode == 0, out.stderr[-3000:]
    final = fx.client.store.status(job_id)
    records = assert_exactly_once(fx, job_id, n, final)
    assert final.failed == 0 and all(r.ok for r in records.values())
    n_batches = final.meta["n_batches"]
    assert n_batches == n // 4
    delivered = deliveries(fx.conn, job_id)
    assert sorted(delivered) == list(range(n_batches))
    window = range(cursor, cursor + submit.BATCHES_PER_ROUND_TRIP)
    assert all(count == 1 for b, count in delivered.items() if b not in window), delivered
    assert all(count <= 2 for b, count in delivered.items() if b in window), delivered
    # inference ran once per batch: the slots' batch counters sum to the number of batches
    inferred = sum(s.get("batches", 0) for s in slot_states(fx.conn, "resume-a").values())
    assert inferred == n_batches
    # and no claim-check payload is left behind (written batches delete theirs)
    assert not list(fx.conn.scan_iter(match=keys.payload(job_id, "*")))  # type: ignore[arg-type]
    print("producer kill:", json.dumps({"images": n, "cursor_at_kill": cursor,
                                        "sent_twice": sorted(b for b, c in delivered.items() if c == 2)}))


# -- 5. Poison batch ----------------------------------------------------------------------------
def test_poison_payload_is_retried_with_backoff_then_dead_lettered(faults, digits):
    """One batch's claim-check payload is garbage: DecodeError is retried ``task_max_retries`` times with
    growing delays, then the batch is dead-lettered with the reason; the rest of the job is ok."""
    fx = faults(TASK_MAX_RETRIES="2", RETRY_BACKOFF_S="0.5")
    files = sorted(digits["images"].glob("digit_00*.png"))[:40]
    job_id = submit.submit(fx.client, submit.SubmitOptions(paths=tuple(map(str, files)), model="digits",
                                                           batch_size=4))
    poison = 3
    key = keys.payload(job_id, poison)
    assert fx.conn.exists(key)
    fx.conn.set(key, b"\xc1 this is not msgpack \xff" * 8, keepttl=True)
    proc = fx.worker("poison-a")
    seen: list[float] = []  # when each delivery of the poison batch started (the attempts count rose)
    deadline = time.monotonic() + 120
    while True:
        pipe = fx.conn.pipeline(transaction=False)
        pipe.hget(keys.job_attempts(job_id), poison)
        pipe.hget(keys.job(job_id), "state")
        count, state = pipe.execute()
        while len(seen) < int(count or 0):
            seen.append(time.monotonic())
        if state == b"done":
            break
        assert proc.poll() is None, fx.log("poison-a")
        assert time.monotonic() < deadline, fx.log("poison-a")
        time.sleep(0.02)
    final = fx.client.store.status(job_id)
    records = assert_exactly_once(fx, job_id, len(files), final)
    delivered = deliveries(fx.conn, job_id)
    assert delivered[poison] == 3  # the first try and task_max_retries=2 retries, no more
    assert all(c == 1 for b, c in delivered.items() if b != poison)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(seen)]
    assert len(gaps) == 2 and gaps[0] >= 0.45 and gaps[1] >= 0.95 and gaps[1] > gaps[0], gaps  # 0.5 s, 1 s
    state = written_batches(fx.conn, job_id)[poison]
    assert state.startswith("dead:") and "DecodeError" in state
    bad = range(poison * 4, poison * 4 + 4)
    for i, rec in records.items():
        if i in bad:
            assert not rec.ok and rec.error_code == "dead_letter", rec
            assert "after 2 retries" in rec.error and "DecodeError" in rec.error and "BatchPayload" in rec.error
        else:
            assert rec.ok, rec
    assert final.failed == 4 and final.done == len(files) - 4 and final.meta["batches_dead"] == 1
    out = fx.cli("status", job_id)
    assert out.returncode == 0, out.stderr
    assert "dead       1 batch(es) dead-lettered" in out.stdout
    assert "4 x dead-lettered after 2 retries: DecodeError: BatchPayload" in out.stdout
    print("poison:", json.dumps({"deliveries": delivered[poison], "gaps_s": gaps}))


# -- 6. Predictor build failures ----------------------------------------------------------------
def test_model_corrupted_in_redis_fails_at_once(faults, digits, tmp_path):
    """A model version whose params blob is corrupted in Redis after publishing, and a worker with an
    empty cache: every batch fails at once with the sha256 mismatch - one delivery each, no retries."""
    cache = tmp_path / "fresh-cache"
    fx = faults(CACHE_DIR=str(cache), RETRY_BACKOFF_S="0.5")
    vid = fx.client.artifacts.publish_version("digits", digits["repo"] / "digits")
    sha = fx.client.artifacts.version(vid)["files"]["inference.pdiparams"]
    chunk = fx.conn.get(keys.blob_chunk(sha, 0))
    fx.conn.set(keys.blob_chunk(sha, 0), chunk[::-1])
    files = sorted(digits["images"].glob("digit_00*.png"))[:12]
    job_id = submit.submit(fx.client, submit.SubmitOptions(paths=tuple(map(str, files)), model="digits",
                                                           batch_size=4))
    assert fx.client.store.meta(job_id)["version_id"] == vid
    proc = fx.worker("corrupt-a")
    final = jobs.wait(fx.client, job_id, timeout_s=120)
    records = assert_exactly_once(fx, job_id, len(files), final)
    for rec in records.values():
        assert not rec.ok and rec.error_code == "bad_model", rec
        assert f"artifact blob {sha[:12]} is corrupt (sha256 mismatch)" in rec.error
    assert written_batches(fx.conn, job_id) == dict.fromkeys(range(3), "failed:bad_model")
    assert final.meta["batches_dead"] == 0
    wait_all_acked(fx, job_id)  # a retry would be queued before its original is acked
    assert deliveries(fx.conn, job_id) == dict.fromkeys(range(3), 1)
    assert not (cache / "models" / vid / ".complete").exists()
    assert proc.poll() is None


def test_precision_the_node_cannot_build_fails_at_once(faults, digits):
    """A TensorRT FP16 batch reaching a CPU worker (listening on the trt.fp16 queue by mistake) fails at
    once with a clear reason, one delivery per batch."""
    fx = faults(RETRY_BACKOFF_S="0.5")
    proc = fx.worker("nofp16-a", "--queues", "trtbatch.paddle.trt.fp16")
    files = sorted(digits["images"].glob("digit_00*.png"))[:8]
    job_id = submit.submit(fx.client, submit.SubmitOptions(paths=tuple(map(str, files)), model="digits",
                                                           precision="fp16", target="trt", batch_size=4))
    assert fx.client.store.meta(job_id)["queue"] == "trtbatch.paddle.trt.fp16"  # no ONNX form: Paddle only
    final = jobs.wait(fx.client, job_id, timeout_s=120)
    records = assert_exactly_once(fx, job_id, len(files), final)
    for rec in records.values():
        assert not rec.ok and rec.error_code == "precision_unsupported", rec
        assert "cannot build a paddle trt/fp16 predictor here" in rec.error and "without CUDA" in rec.error
    assert written_batches(fx.conn, job_id) == dict.fromkeys(range(2), "failed:precision_unsupported")
    wait_all_acked(fx, job_id)  # a retry would be queued before its original is acked
    assert deliveries(fx.conn, job_id) == dict.fromkeys(range(2), 1)
    assert proc.poll() is None


# -- 7. Crash loop ------------------------------------------------------------------------------
def big_png(path: Path, side: int = 6000) -> Path:
    """A valid grayscale PNG that takes ~0.1 s to decode and resize (a window to kill its process in)."""
    import numpy as np
    from PIL import Image

    Image.fromarray((np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8), "L").save(path)
    return path


@pytest.mark.slow
def test_batch_that_kills_its_process_is_dead_lettered(faults, digits):
    """Whenever a pool process starts batch 2, SIGKILL that process (as a crashing decoder would). With
    max_deliveries=3 the batch must be dead-lettered on its 4th delivery, naming the deliveries, and the
    job must finish with the other batches ok."""
    fx = faults(MAX_DELIVERIES="3")
    digit_files = sorted(digits["images"].glob("digit_00*.png"))[:16]
    slow = [big_png(fx.tmp / f"big{i}.png") for i in range(4)]
    files = [*digit_files[:8], *slow, *digit_files[8:]]
    target = 2
    proc = fx.worker("crash-a")
    fx.wait_serving("crash-a", proc)
    job_id = submit.submit(fx.client, submit.SubmitOptions(paths=tuple(map(str, files)), model="digits",
                                                           batch_size=4))
    tag = f"{job_id}:{target}"
    killed: list[int] = []
    kill_times: list[float] = []
    deadline = time.monotonic() + 180
    while len(killed) < 3:
        assert time.monotonic() < deadline, f"killed {killed} so far\n{fx.log('crash-a')}"
        assert fx.client.store.job_state(job_id) != "done", f"the batch finished after {len(killed)} kills"
        count = int(fx.conn.hget(keys.job_attempts(job_id), target) or 0)
        if count > len(killed):  # a new delivery of the target batch: find its process
            pids = [s["pid"] for s in slot_states(fx.conn, "crash-a").values()
                    if s.get("current_batch") == tag and s.get("pid") not in killed]
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                kill_times.append(time.monotonic())
        time.sleep(0.01)
    final = jobs.wait(fx.client, job_id, timeout_s=180)
    records = assert_exactly_once(fx, job_id, len(files), final)
    assert deliveries(fx.conn, job_id)[target] == 4  # three killed, the fourth dead-letters it
    state = written_batches(fx.conn, job_id)[target]
    assert state.startswith("dead:") and "delivered 3 times without finishing" in state
    for i, rec in records.items():
        if i // 4 == target:
            assert not rec.ok and rec.error_code == "dead_letter"
            assert "delivered 3 times without finishing" in rec.error and "the worker process died" in rec.error
        else:
            assert rec.ok, rec
    assert final.meta["batches_dead"] == 1
    assert proc.poll() is None  # the worker itself survived its pool processes
    print("crash loop:", json.dumps({"killed_pids": killed, "s_between_kills": [round(b - a, 1) for a, b in
                                     itertools.pairwise(kill_times)], "state": state}))
