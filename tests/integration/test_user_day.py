"""A user's day through the real ``trtbatch`` command, a real redis-server and the session's real CPU
worker: jobs that nobody can serve end, cancel ends a job at once, refused submissions leave no job,
options are validated instead of changed, Ctrl-C says how to go on, labelled jobs report accuracy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, image_bytes, wait_until, write

pytestmark = pytest.mark.integration
ENTRY = "from cli import main; main()"


@pytest.fixture()
def env(base_env: dict[str, str], cpu_worker: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRTBATCH_")}
    return {**clean, **base_env, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + clean.get("PYTHONPATH", "")}


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    for i in range(6):
        write(folder / f"{i}.png", image_bytes("L", (32, 32), seed=i))
    return folder


def trtbatch(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO_ROOT), check=False)


def job_ids(env: dict[str, str]) -> list[str]:
    out = trtbatch(env, "jobs", "--json")
    assert out.returncode == 0, out.stderr
    return [j["job_id"] for j in json.loads(out.stdout)]


def test_a_job_nobody_serves_says_so_and_wait_ends_after_the_grace_period(env, images) -> None:
    started = time.monotonic()
    out = trtbatch({**env, "TRTBATCH_UNSERVABLE_GRACE_S": "4"}, "submit", "-m", "digits", "--backend", "gpu",
                   "--wait", str(images))
    elapsed = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    assert "warning: no live worker can serve queue trtbatch." in out.stderr  # said up front
    assert "fail if none comes within 4 s" in out.stderr
    job_id = out.stdout.split(":")[0]
    assert out.stdout.startswith(f"{job_id}: failed, 0 ok, 6 failed"), out.stdout
    assert "6 x no live worker can serve queue" in out.stderr
    assert elapsed < 60
    status = json.loads(trtbatch(env, "status", job_id, "--json").stdout)
    assert (status["state"], status["pending"], status["failed"]) == ("failed", 0, 6)
    assert "unservable_grace_s = 4" in status["error"]


def test_cancel_ends_an_unserved_job_at_once(env, images) -> None:
    out = trtbatch(env, "submit", "-m", "digits", "--backend", "gpu", str(images))
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert "warning: no live worker can serve queue" in out.stderr
    out = trtbatch(env, "submit", "--resume", job_id, "--wait", "--timeout", "1")
    assert out.returncode == 3, out.stderr  # the wait gave up; the job goes on, and the message says how
    assert f"job {job_id} is still queued after 1s (0/6 images) and keeps running" in out.stderr
    assert f"trtbatch cancel {job_id}" in out.stderr
    status = json.loads(trtbatch(env, "status", job_id, "--json").stdout)
    assert status["images_per_s"] is None and status["state"] == "queued"
    out = trtbatch(env, "cancel", job_id)
    assert out.stdout.strip() == f"{job_id}: cancelled (0 ok, 0 failed, 6 cancelled)"
    status = json.loads(trtbatch(env, "status", job_id, "--json").stdout)
    assert (status["state"], status["cancelled"], status["failed"], status["pending"]) == ("cancelled", 6, 0, 0)
    assert status["images_per_s"] is None  # nothing ran: no rate
    text = trtbatch(env, "status", job_id).stdout
    assert "img/s" not in text and "6 x job cancelled" in text
    out = trtbatch(env, "retry", job_id)  # the retry cannot be served either, and says so at once
    assert out.returncode == 0 and "warning: no live worker can serve queue" in out.stderr, out.stderr
    trtbatch(env, "cancel", out.stdout.strip())
    out = trtbatch(env, "submit", "--resume", job_id, "--wait", timeout=30)  # ends at once too
    assert out.returncode == 1 and f"{job_id}: cancelled, 0 ok, 0 failed, 6 cancelled" in out.stdout


@pytest.mark.parametrize("content, expected", [
    ("file,label\na.png,1\n", "a CSV manifest needs a 'path' column"),
    ("path,label\n", "the manifest has no rows, only a header"),
])
def test_a_refused_manifest_leaves_no_job(env, tmp_path, content, expected) -> None:
    before = job_ids(env)
    manifest = write(tmp_path / "m.csv", content.encode())
    out = trtbatch(env, "submit", "-m", "digits", str(manifest))
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr
    assert job_ids(env) == before


def test_a_bad_row_deep_in_a_manifest_is_refused_before_the_job(env, images, tmp_path) -> None:
    rows = "".join(f'{{"path": "{images}/{i % 6}.png"}}\n' for i in range(200)) + '{"label": "3"}\n'
    manifest = write(tmp_path / "m.jsonl", rows.encode())
    out = trtbatch(env, "submit", "-m", "digits", str(manifest))
    assert out.returncode == 2 and "m.jsonl:201: row has no 'path'" in out.stderr
    assert job_ids(env) == []


def test_empty_inputs_are_an_error_and_an_empty_folder_among_others_a_warning(env, images, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    out = trtbatch(env, "submit", "-m", "digits", str(tmp_path / "empty"))
    assert out.returncode == 2 and f"no images in {tmp_path / 'empty'} (no file with an image extension" in out.stderr
    out = trtbatch(env, "submit", "-m", "digits", "--wait", str(tmp_path / "empty"), str(images))
    assert out.returncode == 0, out.stderr
    assert f"warning: {tmp_path / 'empty'} holds no images" in out.stderr
    assert ": done, 6 ok, 0 failed" in out.stdout


@pytest.mark.parametrize("args, expected", [
    (("-b", "0"), "Invalid value for '-b' / '--batch-size': 0 is not in the range x>=1"),
    (("-b", "100000000"), "--batch-size 100000000 is over digits's max_batch_size 128; use at most 128"),
    (("--timeout", "5"), "--timeout goes with --wait"),
])
def test_options_are_validated_not_changed(env, images, args, expected) -> None:
    out = trtbatch(env, "submit", "-m", "digits", *args, str(images))
    assert out.returncode == 2 and expected in out.stderr, out.stderr
    assert job_ids(env) == []


def test_resume_refuses_options_that_would_change_the_job(env, images) -> None:
    job_id = trtbatch(env, "submit", "-m", "digits", str(images)).stdout.strip()
    out = trtbatch(env, "submit", "--resume", job_id, "-m", "other", "-b", "4")
    assert out.returncode == 2
    assert "--resume continues a job as it was submitted; it does not take --model, --batch-size" in out.stderr


def test_ctrl_c_during_wait_names_the_job_and_the_commands_to_go_on(env, images) -> None:
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "submit", "-m", "digits", "--backend", "gpu", "--wait",
                             str(images)], env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: job_ids(env), 60, "the job to exist")
        job_id = job_ids(env)[0]
        time.sleep(1.0)  # into the wait
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines()[0] == f"job {job_id}"  # shown up front, before any progress
    assert f"interrupted: job {job_id} keeps running on the workers (all 6 images were sent)" in err
    assert f"trtbatch status {job_id}" in err and f"trtbatch cancel {job_id}" in err
    assert f"trtbatch submit --resume {job_id} --wait" in err
    assert "Traceback" not in err and "Aborted" not in err


def test_labelled_job_reports_accuracy_and_status_json_has_real_types(env, digits) -> None:
    out = trtbatch(env, "submit", "-m", "digits", "--wait", str(digits["labels"]))
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split(":")[0]
    lines = out.stdout.splitlines()
    accuracy = next(line for line in lines if line.startswith("accuracy"))
    assert "/540 labelled images" in accuracy and float(accuracy.split()[1]) >= 0.97
    assert sum(1 for line in lines if line.startswith("  ")) == 10  # one line per class
    status = json.loads(trtbatch(env, "status", job_id, "--json").stdout)
    assert status["state"] == "done" and status["submit_complete"] is True and status["include_outputs"] is False
    assert isinstance(status["done"], int) and isinstance(status["created_s"], float)
    assert isinstance(status["options"], dict) and isinstance(status["options"]["paths"], list)
    assert status["accuracy"]["labelled"] == 540 and set(status["accuracy"]["per_class"]) == {str(i) for i in range(10)}
    _no_encoded_values(status)
    text = trtbatch(env, "status", job_id).stdout
    assert "state      done" in text and "accuracy   " in text


def _no_encoded_values(value: object) -> None:
    """No JSON inside strings and no booleans or numbers spelled as strings."""
    if isinstance(value, dict):
        for v in value.values():
            _no_encoded_values(v)
    elif isinstance(value, list):
        for v in value:
            _no_encoded_values(v)
    elif isinstance(value, str):
        assert value not in ("True", "False", "true", "false", "None", "null"), value
        assert not (value[:1] in ("[", "{") and value[-1:] in ("]", "}")), value


def test_jobs_delete_and_purge(env, images) -> None:
    done = trtbatch(env, "submit", "-m", "digits", "--wait", str(images)).stdout.split(":")[0]
    active = trtbatch(env, "submit", "-m", "digits", "--backend", "gpu", str(images)).stdout.strip()
    out = trtbatch(env, "jobs", "delete", active)
    assert out.returncode == 2 and f"job {active} is queued; cancel it first" in out.stderr
    out = trtbatch(env, "jobs", "purge", "--older-than", "0s", "--dry-run")
    assert out.stdout.strip() == f"would delete {done}" and "1 active job(s) kept" in out.stderr
    assert trtbatch(env, "jobs", "delete", done).stdout.strip() == f"deleted {done}"
    assert job_ids(env) == [active]
    assert trtbatch(env, "jobs", "delete", "--force", active).returncode == 0
    assert job_ids(env) == []
    out = trtbatch(env, "jobs", "delete", done)
    assert out.returncode == 2 and f"no job '{done}'" in out.stderr


def test_resume_from_another_folder_is_refused_not_cut_short(client, images, tmp_path, monkeypatch) -> None:
    """A job submitted with relative paths, interrupted: resumed from elsewhere, its walk would find
    nothing and finish the job short; it is refused with the folder to resume from."""
    from common.errors import JobError
    from common.schemas import JobRecord
    from producer import submit

    monkeypatch.chdir(images.parent)
    opts = submit.SubmitOptions(paths=(images.name,), model="digits", cwd=str(images.parent))
    job_id = submit.new_job_id()
    assert client.store.create_job(JobRecord(job_id=job_id, model="digits", options=asdict(opts)))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(JobError, match=f"resume it from there: cd {images.parent} && trtbatch submit --resume"):
        submit.resume(client, job_id)
    client.store.delete(job_id)
