"""Helpers shared by the CLI commands: the context object, JSON output, progress display."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

import click

from common.config import Settings
from common.store import JobStatus
from producer.client import Client


class Context:
    """Built once per invocation by the click group; commands pull the client from it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.settings)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_ctx = click.make_pass_decorator(Context)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def warn_unservable(status: dict[str, Any], grace_s: float) -> None:
    """The up-front warning of a job that no live worker can serve (``submit``, ``retry``)."""
    if status.get("unservable"):
        click.echo(f"warning: {status['unservable']} Its images fail if none comes within {grace_s:g} s "
                   "(setting unservable_grace_s).", err=True)


def reason_lines(error_reasons: dict[str, int], not_ok: int, limit: int | None = None) -> list[str]:
    """``N x reason`` lines, most common first; headed as a sample when the counts do not cover all
    ``not_ok`` images (status reads at most a few hundred failed records)."""
    counted = sum(error_reasons.values())
    head = [f"reasons among a sample of {counted} of the {not_ok} failed/cancelled images:"] \
        if counted and counted < not_ok else []
    return head + [f"  {count} x {reason}" for reason, count in list(error_reasons.items())[:limit]]


def eta_s(st: JobStatus, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far; None while nothing has finished or more is still being sent."""
    if not st.finished or not st.submit_complete or elapsed_s <= 0:
        return None
    return st.pending / (st.finished / elapsed_s)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_line(st: JobStatus, elapsed_s: float) -> str:
    """One line of progress for logs: counts, rate, elapsed time and ETA."""
    more = "" if st.submit_complete else "+"
    failed = f", {st.failed} failed" if st.failed else ""
    cancelled = f", {st.cancelled} cancelled" if st.cancelled else ""
    rate = (st.done + st.failed) / elapsed_s if elapsed_s > 0 else 0.0  # cancelled records were not run
    return (f"{st.job_id} {st.state}: {st.finished}/{st.n_images}{more} images{failed}{cancelled}, "
            f"{rate:.1f} img/s, elapsed {_clock(elapsed_s)}, ETA {_clock(eta_s(st, elapsed_s))}")


class Progress:
    """Job progress on stderr: click's progress bar (with ETA) on a terminal, a line every 5 s otherwise.

    ``done()`` ends the bar's line, so whatever is printed next (errors included) starts on its own.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        # the job's own start (its record's created_s), not this object's: `demo` trains a model and
        # starts a worker in between, which made its rate and elapsed time count the training
        self._started: float | None = None  # time.time() seconds
        # and its end (finished_s), so the last line's rate is the one `status` gives, not one that
        # counts the wait's polling interval
        self._ended: float | None = None
        self._last = 0.0
        self._bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, st: JobStatus) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._started is None:
                self._started = st.job.created_s or time.time()
            if st.terminal and self._ended is None:
                self._ended = st.job.finished_s or time.time()
            if click._compat.isatty(self.stream):
                self._draw(st)
            elif time.monotonic() - self._last >= 5 or st.terminal:
                self._last = time.monotonic()
                click.echo(progress_line(st, self.elapsed_s), file=self.stream)

    @property
    def elapsed_s(self) -> float:
        if self._started is None:
            return 0.0
        return max(0.0, (self._ended or time.time()) - self._started)

    def _describe(self, st: JobStatus | None) -> str:
        """The text after click's bar: state, failures, rate, elapsed time and ETA."""
        if st is None:
            return ""
        ran = st.done + st.failed  # cancelled records were written, not run
        rate = ran / self.elapsed_s if self.elapsed_s > 0 else 0.0
        eta = "" if st.terminal else f", ETA {_clock(eta_s(st, self.elapsed_s))}"
        return f"{_counts(st)}, {rate:.1f} img/s, elapsed {_clock(self.elapsed_s)}{eta}"

    def _draw(self, st: JobStatus) -> None:
        if self._bar is None:
            # our own ETA (eta_s, from the job's start) instead of click's, which counts from the
            # bar's creation: a resumed wait on a job 90 % done would show an ETA near 0 at once
            self._bar = click.progressbar(length=max(st.n_images, 1), label=st.job_id, show_eta=False,
                                          show_pos=True, file=self.stream, width=30,
                                          item_show_func=self._describe)
            self._bar.__enter__()
        self._bar.length = max(st.n_images, st.finished, 1)
        self._bar.finished = st.terminal  # the length grows while the producer still sends
        self._bar.update(st.finished - self._bar.pos, st)

    def done(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.render_finish()
                self._bar = None
            self.enabled = False


def _counts(st: JobStatus) -> str:
    parts = [st.state] + ([f"{st.failed} failed"] if st.failed else []) + (
        [f"{st.cancelled} cancelled"] if st.cancelled else []) + ([] if st.submit_complete else ["still sending"])
    return ", ".join(parts)


class Poller:
    """Polls a job's status in a thread while the main thread submits (for ``submit --wait``)."""

    def __init__(self, client: Client, job_id: str, progress: Progress, interval_s: float = 0.5) -> None:
        self.client, self.job_id, self.progress, self.interval_s = client, job_id, progress, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.progress(self.client.store.status(self.job_id, reasons=0))
            except Exception:  # display only; the main thread reports real errors
                continue
