"""Submit a job: resolve the model, stream inputs into claim-check batches, enqueue, resume.

Each batch's image bytes go to Redis under ``trtbatch:payload:<job>:<batch>`` (pipelined,
1, 2, 4, then ``BATCHES_PER_ROUND_TRIP`` at a time, by a sending thread while the next batches' files
are read)
and its Celery message carries only keys. At most
``max_inflight_batches`` batches are queued but unfinished at any moment (backpressure), so a
job of a million images needs bounded memory in the producer (two round trips of payloads: one being
read, one being sent), in Redis and in workers. The
input walk is deterministic and the producer records a cursor after every round trip, so
``submit --resume JOB`` continues an interrupted submission without sending a batch twice
(and a batch that *was* sent twice is harmless: results are written idempotently).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace

from common import catalog, closeout, keys, routing
from common.calibration import available_tables, table_files
from common.celery_app import INFER_TASK
from common.errors import (
    InputError,
    JobCancelledError,
    JobError,
    PrecisionUnsupportedError,
    TrtbatchError,
    UnservableError,
)
from common.manifest import ModelManifest
from common.schemas import TERMINAL_STATES, BatchPayload, BatchTask, JobRecord, PayloadItem
from common.spec import ORT_CALIB_KEY, calib_key_for
from producer.client import Client
from producer.inputs import InputItem, check_inputs, display_path, iter_inputs, read_bytes

BATCHES_PER_ROUND_TRIP = 8
#: The first round trips are smaller - 1, 2, 4 batches, then BATCHES_PER_ROUND_TRIP - so a worker gets
#: the first batch as soon as its files are read, not after the first 8 batches' files.
FIRST_ROUND_TRIP = 1
BACKPRESSURE_POLL_S = 0.05
SERVABLE_CHECK_S = 2.0


@dataclass(frozen=True)
class SubmitOptions:
    paths: tuple[str, ...]
    model: str
    precision: str = "fp32"
    target: str = "any"
    batch_size: int = 0
    top_k: int = 0
    include_outputs: bool = False
    engine: str = "any"
    #: the producer's working folder: what relative input paths (and the paths in results) are relative to
    cwd: str = ""
    #: the job whose failed and cancelled images this job retries (`trtbatch retry`)
    retry_of: str = ""


@dataclass(frozen=True)
class Plan:
    resolved: catalog.Resolved
    queue: str
    batch_size: int
    top_k: int
    engine: str


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def publish_local(client: Client, name: str, precision: str) -> None:
    """Publish the local model (and its quantized sibling for INT8) so any worker can fetch it."""
    repo = client.repo
    if repo.exists(name):
        client.artifacts.publish_version(name, repo.dir(name))
    if precision == "int8":
        qname = repo.quantized_for(name)
        if qname:
            client.artifacts.publish_version(qname, repo.dir(qname))


def _batch(client: Client, opts: SubmitOptions, manifest: ModelManifest) -> int:
    """The batch size asked for (never changed: one the model cannot take is refused), else the
    setting's default capped by the model's ``max_batch_size``."""
    if opts.batch_size > manifest.max_batch_size:
        raise InputError(f"--batch-size {opts.batch_size} is over {manifest.name}'s max_batch_size "
                         f"{manifest.max_batch_size}; use at most {manifest.max_batch_size}")
    return opts.batch_size or min(client.settings.default_batch_size, manifest.max_batch_size)


def make_plan(client: Client, opts: SubmitOptions) -> Plan:
    routing.check_request(opts.target, opts.precision, opts.engine)
    if opts.batch_size < 0:
        raise InputError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if client.repo.exists(opts.model) or opts.precision == "int8":
        publish_local(client, opts.model, opts.precision)

    def has_table(engine: str, vid: str, manifest: ModelManifest) -> bool:
        if engine == "onnxruntime":
            onnx = catalog.onnx_form(client.artifacts, vid, manifest, "fp32")
            return bool(onnx and table_files(client.artifacts, onnx, ORT_CALIB_KEY))
        return manifest.format == "paddle" and bool(
            table_files(client.artifacts, vid, calib_key_for(manifest, vid, _batch(client, opts, manifest))))

    try:
        resolved = catalog.resolve(client.artifacts, opts.model, opts.precision, opts.target, has_table=has_table,
                                   engine=opts.engine)
    except PrecisionUnsupportedError:
        _explain_table_mismatch(client, opts)
        raise
    engine = _engine(client, opts, resolved)
    manifest = resolved.manifest
    return Plan(resolved=resolved, queue=routing.job_queue(resolved.target, opts.precision, engine),
                batch_size=_batch(client, opts, manifest), top_k=opts.top_k or manifest.postprocess.top_k,
                engine=engine)


def _engine(client: Client, opts: SubmitOptions, resolved: catalog.Resolved) -> str:
    """The engine the job's queue names: the one asked for, or - for ``any`` - the engines that have what
    they need to serve it (an engine without the model's ONNX form would fail every batch it took)."""
    engines = catalog.engines_with_forms(client.artifacts, resolved, opts.precision, resolved.target)
    if engines:
        return engines[0] if len(engines) == 1 else "any"
    missing = catalog.missing_forms(client.artifacts, resolved, opts.precision, resolved.target)
    flag = " --fp16" if "fp16" in missing else ""
    raise PrecisionUnsupportedError(
        f"{resolved.name} ({resolved.version_id}) has no ONNX form ({', '.join(missing)}) for the onnxruntime "
        f"engine; make it with `trtbatch convert --model {resolved.name}{flag} --wait`")


def _explain_table_mismatch(client: Client, opts: SubmitOptions) -> None:
    """INT8 failed to resolve: if TensorRT tables exist for other batch sizes, say which."""
    if opts.precision != "int8" or opts.target not in ("trt", "any"):
        return
    vid = catalog.latest_version(client.artifacts, opts.model)
    sizes = sorted({t.get("batch_size") for t in available_tables(client.artifacts, vid)} - {None})
    if sizes:
        batch = _batch(client, opts, client.artifacts.manifest(vid))
        raise PrecisionUnsupportedError(
            f"the TensorRT calibration tables of {opts.model} ({vid}) were made for batch size(s) {sizes}, this "
            f"job uses {batch}: submit with --batch-size {sizes[0]} or run `trtbatch calibrate --model "
            f"{opts.model} --method trt --batch-size {batch} --images DIR`")


def job_record(job_id: str, opts: SubmitOptions, plan: Plan) -> JobRecord:
    return JobRecord(job_id=job_id, model=plan.resolved.name, requested_model=opts.model,
                     version_id=plan.resolved.version_id, precision=opts.precision,  # type: ignore[arg-type]
                     target=plan.resolved.target, queue=plan.queue, engine=plan.engine,  # type: ignore[arg-type]
                     batch_size=plan.batch_size, top_k=plan.top_k, int8_source=plan.resolved.int8_source,
                     include_outputs=opts.include_outputs, options=asdict(opts),
                     producer=f"{socket.gethostname()}:{os.getpid()}")


def submit(client: Client, opts: SubmitOptions, on_batch: Callable[[int], None] | None = None,
           job_id: str | None = None, on_warning: Callable[[str], None] | None = None) -> str:
    """Create a job and send every batch; returns the job id. Everything that can be checked before
    the job exists is (inputs, model, precision, batch size): a refused submission leaves no job."""
    if not opts.paths:
        raise InputError("no input paths given")
    opts = replace(opts, cwd=opts.cwd or os.getcwd())
    for warning in check_inputs(opts.paths):
        if on_warning:
            on_warning(warning)
    plan = make_plan(client, opts)
    job_id = job_id or new_job_id()
    if not client.store.create_job(job_record(job_id, opts, plan)):
        raise JobError(f"job {job_id} already exists; use `trtbatch submit --resume {job_id}`")
    try:
        _send_all(client, job_id, opts, plan, 0, 0, on_batch)
    except TrtbatchError:
        if not client.store.progress(job_id):  # nothing was sent: no job to keep
            client.store.delete(job_id)
        raise
    return job_id


def resume(client: Client, job_id: str, on_batch: Callable[[int], None] | None = None) -> str:
    """Finish sending an interrupted job's batches (a finished submission is a no-op)."""
    job = client.store.record(job_id)
    if job.submit_complete:
        return job_id
    if job.terminal:
        raise JobError(f"job {job_id} is {job.state} (after {job.n_enqueued} images were sent); nothing to resume")
    if not job.options:
        raise JobError(f"job {job_id} is not an inference job submitted by `trtbatch submit`; it cannot be resumed")
    known = {f.name for f in fields(SubmitOptions)}  # a newer writer's extra keys left out
    opts = SubmitOptions(**{k: tuple(v) if k == "paths" else v for k, v in job.options.items() if k in known})
    # The walk must see what the first run saw: relative paths from the same folder (records keep the
    # paths as given), and inputs still there - a walk of a missing folder would send nothing more
    # and finish the job short.
    relative = [p for p in opts.paths if not os.path.isabs(p)]
    if relative and opts.cwd and os.path.realpath(opts.cwd) != os.path.realpath(os.getcwd()):
        raise JobError(f"job {job_id} was submitted from {opts.cwd} with relative paths ({relative[0]}...); "
                       f"resume it from there: cd {opts.cwd} && trtbatch submit --resume {job_id}")
    check_inputs(opts.paths)
    plan = make_plan(client, opts)
    if plan.resolved.version_id != job.version_id:
        raise JobError(f"model {opts.model} changed since job {job_id} started "
                       f"({job.version_id} -> {plan.resolved.version_id}); submit a new job")
    progress = client.store.progress(job_id) or {"batches": 0, "images": 0}
    _send_all(client, job_id, opts, plan, progress["batches"], progress["images"], on_batch)
    return job_id


def _chunks(items: Iterator[InputItem], size: int) -> Iterator[list[InputItem]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _payload(chunk: list[InputItem], start: int, max_bytes: int) -> BatchPayload:
    out = []
    for offset, item in enumerate(chunk):
        data, error = read_bytes(item.path, max_bytes)
        out.append(PayloadItem(index=start + offset, path=display_path(item.path), data=data,
                               label=item.label, error=error))
    return BatchPayload(tuple(out))


def _send_all(client: Client, job_id: str, opts: SubmitOptions, plan: Plan, skip_batches: int,
              start_index: int, on_batch: Callable[[int], None] | None) -> None:
    sender = _Sender(client, job_id, opts, plan, skip_batches, start_index)
    index = 0
    done = False
    try:
        for batch_no, chunk in enumerate(_chunks(iter_inputs(opts.paths), plan.batch_size)):
            if batch_no >= skip_batches:
                if sender.add(batch_no, index, chunk) and (
                        sender.job_ended or client.store.job_state(job_id) in TERMINAL_STATES):
                    break  # cancelled, or failed as unservable: stop sending
                if on_batch:
                    on_batch(len(chunk))
            index += len(chunk)
        sender.flush()
        done = True
    finally:
        sender.close(stop=not done)  # no round trip outlives this call (a refused job may be deleted next)
    state = client.store.mark_submitted(job_id, sender.sent_images, sender.sent_batches)
    error = client.store.record(job_id).error
    if state == "cancelled":  # ended while we sent: close out what was sent since
        closeout.close_out(client.store, job_id, JobCancelledError("job cancelled"))
    elif state == "failed" and error:
        closeout.close_out(client.store, job_id, UnservableError(error))
    else:
        closeout.check_servable(client.store, client.live_workers(), client.store.record(job_id),
                                client.settings.unservable_grace_s)


class _Sender:
    """Groups batches into pipelined round trips, with backpressure and a resume cursor. One round
    trip at a time is in flight, on a sending thread, while the caller reads the next batches' files:
    batches still reach Redis in order, and the cursor never gets ahead of what Redis holds."""

    def __init__(self, client: Client, job_id: str, opts: SubmitOptions, plan: Plan, sent_batches: int,
                 sent_images: int) -> None:
        self.client, self.job_id, self.opts, self.plan = client, job_id, opts, plan
        self.pending: list[tuple[int, int, BatchPayload]] = []
        self.sent_batches = sent_batches
        self.sent_images = sent_images
        self.max_inflight = client.settings.max_inflight_batches * plan.batch_size
        self._trip = FIRST_ROUND_TRIP  # batches of the next round trip
        self._checked_s = 0.0
        self._io = ThreadPoolExecutor(1, thread_name_prefix="submit-send")
        self._sending: Future[None] | None = None
        #: set when the caller leaves on an error (Ctrl-C included): a round trip still waiting for room
        #: gives up instead of being sent after the user stopped
        self._stop = threading.Event()
        #: the job ended (cancelled, failed) while a round trip waited for room: nothing more is sent
        self.job_ended = False

    def add(self, batch_no: int, start: int, chunk: list[InputItem]) -> bool:
        """Queue one batch; returns True when a round trip was started."""
        self.pending.append((batch_no, start, _payload(chunk, start, self.client.settings.max_file_bytes)))
        if len(self.pending) >= self._trip:
            self._start()
            self._trip = min(2 * self._trip, BATCHES_PER_ROUND_TRIP)
            return True
        return False

    def flush(self) -> None:
        """Send what is queued and wait until every round trip is done (errors surface here)."""
        self._start()
        self._join()

    def close(self, stop: bool = False) -> None:
        """End the sending thread: with ``stop`` (the caller's error cut the submission short) a round
        trip still waiting for room is dropped; one already writing to Redis is finished either way,
        so the resume cursor stays true."""
        if stop:
            self._stop.set()
        self._io.shutdown(wait=True)

    def _start(self) -> None:
        self._join()
        if self.pending:
            batches, self.pending = self.pending, []
            self._sending = self._io.submit(self._send, batches)

    def _join(self) -> None:
        if self._sending is not None:
            sending, self._sending = self._sending, None
            sending.result()

    def _send(self, batches: list[tuple[int, int, BatchPayload]]) -> None:
        if not self._wait_for_room():
            return
        ttl = self.client.settings.payload_ttl_s
        pipe = self.client.conn.pipeline(transaction=False)
        for batch_no, _, payload in batches:
            pipe.set(keys.payload(self.job_id, batch_no), payload.encode(), ex=ttl)
        pipe.execute()
        with self.client.app.producer_or_acquire() as producer:
            for batch_no, start, payload in batches:
                self.client.app.send_task(INFER_TASK, args=[self._task(batch_no, start, payload).encode()],
                                          queue=self.plan.queue, producer=producer)
        last_no, last_start, last_payload = batches[-1]
        cursor = {"batches": last_no + 1, "images": last_start + len(last_payload.items)}
        self.client.store.note_enqueued(self.job_id, sum(len(p.items) for _, _, p in batches), cursor)
        self.sent_batches, self.sent_images = cursor["batches"], cursor["images"]

    def _task(self, batch_no: int, start: int, payload: BatchPayload) -> BatchTask:
        r = self.plan.resolved
        return BatchTask(job_id=self.job_id, batch_no=batch_no, payload_key=keys.payload(self.job_id, batch_no),
                         version_id=r.version_id, model=r.name, precision=self.opts.precision,
                         target=r.target, batch_size=self.plan.batch_size, n_images=len(payload.items),
                         start_index=start, int8_source=r.int8_source, top_k=self.plan.top_k,
                         include_outputs=self.opts.include_outputs, engine=self.plan.engine)  # type: ignore[arg-type]

    def _wait_for_room(self) -> bool:
        """Wait until the job has room for more batches; False when nothing more is to be sent (the
        job ended, or the caller stopped)."""
        while not self._stop.is_set():
            meta = self.client.conn.hmget(keys.job(self.job_id), "n_enqueued", "done", "failed", "state")
            enqueued, done, failed = (int(x or 0) for x in meta[:3])
            if (meta[3] or b"").decode() in TERMINAL_STATES:
                self.job_ended = True
                return False
            if enqueued - done - failed < self.max_inflight:
                return True
            self._check_servable()
            self._stop.wait(BACKPRESSURE_POLL_S)
        return False

    def _check_servable(self) -> None:
        """While blocked on a job nobody serves, apply the unservable rule (so this wait ends too)."""
        now = time.monotonic()
        if now - self._checked_s >= SERVABLE_CHECK_S:
            self._checked_s = now
            closeout.check_servable(self.client.store, self.client.live_workers(),
                                    self.client.store.record(self.job_id), self.client.settings.unservable_grace_s)
