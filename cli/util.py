"""Helpers shared by the CLI commands: the context object, JSON output, progress display."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

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


def progress_line(st: JobStatus) -> str:
    total = st.n_images if st.submit_complete else max(st.n_images, 1)
    width = 30
    frac = st.finished / total if total else 0.0
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    created = st.job.created_s or time.time()
    rate = st.finished / max(time.time() - created, 1e-9)
    more = "" if st.submit_complete else "+"
    failed = f", {st.failed} failed" if st.failed else ""
    return f"[{bar}] {st.finished}/{st.n_images}{more} images{failed}, {rate:.1f} img/s"


class Progress:
    """Renders job progress on stderr: a redrawn bar on a terminal, a line every 5 s otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, st: JobStatus) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            click.echo("\r" + progress_line(st), nl=False, err=True)
        elif now - self._last >= 5 or st.terminal:
            click.echo(progress_line(st), err=True)
        self._last = now

    def done(self) -> None:
        if self.enabled and self._tty:
            click.echo("", err=True)


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
