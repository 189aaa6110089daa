"""``worker --check``'s records: one file per worker process, keyed so two workers never collide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import Settings
from tests.helpers import REPO_ROOT
from workers.process import health


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:6390/0", state_dir=tmp_path / "state")


WRITE_RECORD = """
import sys
from pathlib import Path
from common.config import Settings
from workers.process import health
print(health.write_pidfile(Settings(redis_url=sys.argv[1], state_dir=Path(sys.argv[2])), "cpu@host", 0))
"""


def test_two_workers_of_one_name_keep_their_own_records(settings: Settings) -> None:
    """The same name on two Redis servers (and the default name launched twice): neither record
    overwrites the other, and removing one leaves the other."""
    mine = health.write_pidfile(settings, "cpu@host", 0)
    try:  # the other worker is another process: it writes its record from there
        out = subprocess.run([sys.executable, "-c", WRITE_RECORD, "redis://127.0.0.1:6391/0", str(settings.state_dir)],
                             capture_output=True, text=True, check=True, cwd=REPO_ROOT)
        theirs = Path(out.stdout.strip())
        assert theirs != mine and theirs.exists() and mine.exists()
        records = {r.redis: r for r in health.read_records(settings)}
        assert set(records) == {"redis://127.0.0.1:6390/0", "redis://127.0.0.1:6391/0"}
        assert records["redis://127.0.0.1:6390/0"].pid == os.getpid() and records["redis://127.0.0.1:6390/0"].alive
        assert not records["redis://127.0.0.1:6391/0"].alive  # that process has exited
        health.remove_pidfile(theirs)
        assert mine.exists() and [r.path for r in health.read_records(settings)] == [mine]
    finally:
        health.remove_pidfile(mine)


def test_a_record_of_a_dead_process_is_not_alive_even_if_its_pid_is_reused(settings: Settings) -> None:
    path = health.write_pidfile(settings, "cpu@host", 0)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "created_s": record["created_s"] - 3600}))  # another process, same pid
    (rec,) = health.read_records(settings)
    assert not rec.alive
    again = health.write_pidfile(settings, "cpu@host", 0)  # a stale file with our pid never blocks a start
    assert again == path and health.read_records(settings)[0].alive


def test_check_without_records_names_the_folder_and_the_redis(settings: Settings) -> None:
    ok, lines = health.check(settings)
    assert not ok and lines == [f"no worker is running from {settings.state_dir / 'workers'} for "
                                "redis://127.0.0.1:6390/0"]
    other = settings.replace(redis_url="redis://127.0.0.1:6391/0")
    path = health.write_pidfile(other, "cpu@host", 0)
    try:
        ok, lines = health.check(settings)
        assert not ok and "(1 worker record(s) there serve other Redis servers)" in lines[0]
    finally:
        health.remove_pidfile(path)


def test_record_passwords_are_redacted(settings: Settings) -> None:
    secret = settings.replace(redis_url="redis://app:hunter2@127.0.0.1:6390/0")
    path = health.write_pidfile(secret, "cpu@host", 0)
    assert "hunter2" not in path.read_text() and "app:***@" in path.read_text()


def test_a_killed_worker_is_reported_until_restarted_or_its_whole_launch_is_gone(settings: Settings) -> None:
    out = subprocess.run([sys.executable, "-c", WRITE_RECORD, "redis://127.0.0.1:6390/0", str(settings.state_dir)],
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    dead = Path(out.stdout.strip())  # its process has exited; its launcher (this test) lives
    records, _ = health._mine(settings, None)
    assert [r.path for r in records] == [dead] and not records[0].alive and records[0].launcher_alive
    body = json.loads(dead.read_text())  # the launcher gone too: a new launch will not restart it
    dead.write_text(json.dumps({**body, "launcher_created_s": body["launcher_created_s"] - 3600}))
    assert health._mine(settings, None) == ([], 0) and not dead.exists()
