"""``trtbatch retry`` end to end: a real redis-server, the session's real CPU worker (Paddle), and the real
``trtbatch`` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from common import keys
from common.schemas import JobRecord, ResultRecord
from producer import jobs, retry, submit
from producer.client import Client
from tests.helpers import REPO_ROOT, worker_env

pytestmark = pytest.mark.integration

ENTRY = "from cli import main; main()"
CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
RETRIED = ("model", "precision", "target", "engine", "batch_size", "top_k", "include_outputs")


def trtbatch(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(cwd), check=False)


@pytest.fixture()
def cli_env(base_env: dict[str, str]) -> dict[str, str]:
    return worker_env(base_env)


def digit_pngs(digits: dict[str, Path], n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted(digits["images"].glob("digit_00*.png"))[:n]]


def test_retry_resubmits_failed_images_with_the_original_options(client: Client, cpu_worker: str, digits,
                                                                 cli_env: dict[str, str], workdir: Path) -> None:
    good = digit_pngs(digits, 8)
    for i in range(5):
        (workdir / f"g{i}.png").write_bytes(good[i])
    for name in ("b0.png", "b1.png", "b2.png"):
        (workdir / name).write_bytes(CORRUPT)
    weird = os.path.join(str(workdir), os.fsdecode(b"odd\xff.png"))  # a name that is not UTF-8
    with open(os.fsencode(weird), "wb") as fh:
        fh.write(CORRUPT)
    manifest = workdir / "labels.csv"
    rows = [f"g{i}.png,{i}" for i in range(5)] + ["b0.png,3", "b1.png,7", "b2.png,1"]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    opts = submit.SubmitOptions(paths=(str(manifest), weird), model="digits", target="cpu", engine="paddle",
                                batch_size=3, top_k=2, include_outputs=True)
    job_id = submit.submit(client, opts)
    first = jobs.wait(client, job_id, timeout_s=180)
    assert (first.done, first.failed) == (5, 4)

    (workdir / "b0.png").write_bytes(good[5])  # repaired
    (workdir / "b1.png").write_bytes(good[6])
    with open(os.fsencode(weird), "wb") as fh:
        fh.write(good[7])
    (workdir / "b2.png").unlink()  # gone: fails again, with the usual reason
    res = trtbatch(cli_env, REPO_ROOT, "retry", job_id, "--wait", "--json")
    assert res.returncode == 1, res.stderr  # one image failed again
    out = json.loads(res.stdout)
    assert out["retry_of"] == job_id
    assert out["retried"] == {"images": 4, "failed": 4, "cancelled": 0, "not_found": 1, "no_path": 0}
    new_id = out["job_id"]
    assert (out["state"], out["done"], out["failed"]) == ("done", 3, 1)

    source, again = client.store.record(job_id), client.store.record(new_id)
    assert again.options["retry_of"] == job_id
    assert {k: again.options[k] for k in RETRIED} == {k: source.options[k] for k in RETRIED}
    assert (again.model, again.precision, again.engine, again.batch_size, again.top_k, again.include_outputs) == \
        (source.model, source.precision, source.engine, source.batch_size, source.top_k, source.include_outputs)
    manifest_file = Path(again.options["paths"][0])
    assert manifest_file.parent == Path(client.settings.state_dir) / retry.RETRY_DIR and manifest_file.is_file()

    by_name = {Path(r.path).name: r for r in client.store.iter_results(new_id)}
    assert sorted(by_name) == ["b0.png", "b1.png", "b2.png", "odd\ufffd.png"]
    assert (by_name["b0.png"].label, by_name["b1.png"].label, by_name["b2.png"].label) == ("3", "7", "1")
    for name in ("b0.png", "b1.png", "odd\ufffd.png"):
        rec = by_name[name]
        assert rec.ok and len(rec.top_k) == 2 and rec.outputs, rec
    assert by_name["odd\ufffd.png"].label is None
    assert not by_name["b2.png"].ok and by_name["b2.png"].error == "file not found"

    res = trtbatch(cli_env, REPO_ROOT, "retry", new_id)  # a retry of the retry: the one still missing
    assert res.returncode == 0, res.stderr
    assert f"retrying 1 image(s) of {new_id} (1 failed)" in res.stderr
    assert "1 of them are no longer at their recorded path" in res.stderr
    assert client.store.record(res.stdout.strip()).options["retry_of"] == new_id


def test_retry_of_cancelled_and_failed_records(client: Client, cpu_worker: str, digits, cli_env: dict[str, str],
                                               workdir: Path) -> None:
    """Cancelled images (error_code ``cancelled``) are retried with the failed ones; a record with no path
    (its payload expired before the job ended) cannot be, and is counted."""
    pngs = digit_pngs(digits, 3)
    paths = [workdir / f"d{i}.png" for i in range(3)]
    for path, data in zip(paths, pngs, strict=True):
        path.write_bytes(data)
    job_id = "20990101-000000-cafe0001"
    options = asdict(submit.SubmitOptions(paths=("gone.csv",), model="digits", target="cpu", engine="paddle",
                                          batch_size=4, top_k=1))
    store = client.store
    assert store.create_job(JobRecord(job_id=job_id, model="digits", version_id="v0", queue="trtbatch.paddle.cpu.fp32",
                                      batch_size=4, top_k=1, options=options))
    base = {"job_id": job_id, "model": "digits"}
    records = [ResultRecord(index=0, path=str(paths[0]), ok=True, top_k=[{"label": "0", "index": 0, "score": 1.0}],
                            **base),
               ResultRecord(index=1, path=str(paths[1]), ok=False, error="job cancelled", error_code="cancelled",
                            label="5", **base),
               ResultRecord(index=2, path=str(paths[2]), ok=False, error="worker lost", error_code="worker_lost",
                            **base),
               ResultRecord(index=3, path="", ok=False, error="job cancelled", error_code="cancelled", **base)]
    store.write_batch(job_id, 0, records, keys.payload(job_id, 0))
    store.mark_submitted(job_id, 4, 1)
    assert store.record(job_id).terminal

    res = trtbatch(cli_env, REPO_ROOT, "retry", job_id, "--wait")
    assert res.returncode == 0, res.stderr
    assert "retrying 2 image(s) of 20990101-000000-cafe0001 (1 failed, 1 cancelled)" in res.stderr
    assert "1 failed image(s) have no recorded path" in res.stderr
    new_id, summary = res.stdout.strip().splitlines()[-1].split(": ")
    assert summary == "done, 2 ok, 0 failed"
    got = {r.path: r for r in store.iter_results(new_id)}
    assert sorted(got) == [str(paths[1]), str(paths[2])] and got[str(paths[1])].label == "5"
    assert all(r.ok and len(r.top_k) == 1 for r in got.values())


def test_retry_refusals(client: Client, cpu_worker: str, digits, cli_env: dict[str, str], workdir: Path) -> None:
    (workdir / "ok.png").write_bytes(digit_pngs(digits, 1)[0])
    job_id = submit.submit(client, submit.SubmitOptions(paths=(str(workdir / "ok.png"),), model="digits"))
    assert jobs.wait(client, job_id, timeout_s=120).failed == 0
    res = trtbatch(cli_env, workdir, "retry", job_id)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.strip() == f"job {job_id} has no failed or cancelled images; nothing to retry"

    res = trtbatch(cli_env, workdir, "retry", "20990101-000000-deadbeef")
    assert res.returncode == 2 and res.stderr.strip() == \
        "error: no job '20990101-000000-deadbeef' (unknown id, or its results expired)"

    manifests = Path(client.settings.state_dir) / retry.RETRY_DIR
    before = sorted(manifests.glob("*.jsonl")) if manifests.is_dir() else []
    running = "20990101-000000-cafe0002"
    assert client.store.create_job(JobRecord(job_id=running, model="digits", options={"paths": ["x"]}))
    res = trtbatch(cli_env, workdir, "retry", running)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert f"job {running} is still submitting: wait for it" in res.stderr
    assert sorted(manifests.glob("*.jsonl")) == before  # no manifest written


def test_relative_paths_are_found_from_where_the_job_was_submitted(client: Client, cpu_worker: str, digits,
                                                                     cli_env: dict[str, str], workdir: Path) -> None:
    (workdir / "rel").mkdir()
    (workdir / "rel" / "x.png").write_bytes(CORRUPT)
    res = trtbatch(cli_env, workdir, "submit", "rel/x.png", "-m", "digits", "--backend", "cpu", "--wait")
    assert res.returncode == 1, res.stderr
    job_id = res.stdout.strip().splitlines()[-1].split(":")[0]
    assert [r.path for r in client.store.iter_results(job_id)] == ["rel/x.png"]
    (workdir / "rel" / "x.png").write_bytes(digit_pngs(digits, 1)[0])

    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    res = trtbatch(cli_env, elsewhere, "retry", job_id, "--wait")  # the submit recorded its folder
    assert res.returncode == 0, res.stderr
    new_id = res.stdout.strip().splitlines()[-1].split(":")[0]
    assert [(r.path, r.ok) for r in client.store.iter_results(new_id)] == [(str(workdir / "rel" / "x.png"), True)]
