"""Progress display: click's bar with an ETA on a terminal, timed lines with elapsed time and ETA in logs."""

from __future__ import annotations

import io

from cli.util import Progress, eta_s, progress_line
from common.schemas import JobRecord
from common.store import JobStatus


def status(done: int, n: int, complete: bool = True, failed: int = 0, state: str = "running") -> JobStatus:
    job = JobRecord(job_id="job-1", state=state, done=done, failed=failed, n_images=n,  # type: ignore[arg-type]
                    n_enqueued=n, submit_complete=complete)
    return JobStatus(job=job, n_images=n)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eta_from_the_rate_so_far() -> None:
    assert eta_s(status(25, 100), elapsed_s=10) == 30.0
    assert eta_s(status(0, 100), elapsed_s=10) is None  # no rate yet
    assert eta_s(status(25, 100, complete=False), elapsed_s=10) is None  # the total is not known yet


def test_log_line_has_counts_rate_elapsed_and_eta() -> None:
    line = progress_line(status(25, 100, failed=5), elapsed_s=75)
    # failed images have finished too
    assert line == "job-1 running: 30/100 images, 5 failed, 0.4 img/s, elapsed 01:15, ETA 02:55"
    assert progress_line(status(3, 8, complete=False), 1).startswith("job-1 running: 3/8+ images")


def test_terminal_gets_clicks_bar_and_done_ends_its_line() -> None:
    out = Terminal()
    progress = Progress(stream=out)
    progress(status(0, 100, state="queued"))
    progress(status(50, 100, failed=2))
    progress.done()
    text = out.getvalue()
    assert "job-1" in text and "[###############---------------]" in text and "52/100" in text
    assert "2 failed" in text and text.endswith("\n")  # what is printed next starts on its own line
    assert "img/s, elapsed 00:00" in text
    progress(status(60, 100))  # after done(): nothing more is drawn
    assert out.getvalue() == text


def test_log_stream_gets_a_line_at_most_every_five_seconds_and_the_last_one() -> None:
    out = io.StringIO()
    progress = Progress(stream=out)
    for done in range(0, 100, 10):
        progress(status(done, 100))
    progress(status(100, 100, state="done"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("job-1 done: 100/100 images")


def test_failure_reasons_say_when_they_are_a_sample() -> None:
    from cli.util import reason_lines

    assert reason_lines({"job cancelled": 200}, 540) == [
        "reasons among a sample of 200 of the 540 failed/cancelled images:", "  200 x job cancelled"]
    assert reason_lines({"a": 2, "b": 1}, 3, limit=1) == ["  2 x a"]  # all counted: no heading


def test_the_last_line_rates_the_job_from_its_start_to_its_finish() -> None:
    out = io.StringIO()
    progress = Progress(stream=out)
    job = JobRecord(job_id="job-1", state="done", done=540, n_images=540, n_enqueued=540,  # type: ignore[arg-type]
                    submit_complete=True, created_s=1000.0, finished_s=1000.5)
    progress(JobStatus(job=job, n_images=540))  # seen long after it finished: `status` says the same rate
    assert out.getvalue().strip().endswith("540/540 images, 1080.0 img/s, elapsed 00:01, ETA 00:00")
