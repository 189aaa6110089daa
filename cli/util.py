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
    rate = st.finished / elapsed_s if elapsed_s > 0 else 0.0
    return (f"{st.job_id} {st.state}: {st.finished}/{st.n_images}{more} images{failed}{cancelled}, "
            f"{rate:.1f} img/s, elapsed {_clock(elapsed_s)}, ETA {_clock(eta_s(st, elapsed_s))}")


class Progress:
    """Job progress on stderr: click's progress bar (with ETA) on a terminal, a line every 5 s otherwise.

    ``done()`` ends the bar's line, so whatever is printed next (errors included) starts on its own.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._started = time.monotonic()
        self._last = 0.0
        self._bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, st: JobStatus) -> None:
        if not self.enabled:
            return
        with self._lock:
            if click._compat.isatty(self.stream):
                self._draw(st)
            elif time.monotonic() - self._last >= 5 or st.terminal:
                self._last = time.monotonic()
                click.echo(progress_line(st, time.monotonic() - self._started), file=self.stream)

    def _draw(self, st: JobStatus) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=max(st.n_images, 1), label=st.job_id, show_eta=True,
                                          show_pos=True, file=self.stream, width=30,
                                          item_show_func=_counts)
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


def _counts(st: JobStatus | None) -> str:
    if st is None:
        return ""
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
