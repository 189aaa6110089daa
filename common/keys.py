"""Every Redis key trtbatch uses, built in one place with one prefix and one style.

Layout (type, TTL):

Jobs
  trtbatch:jobs                          ZSET  job id -> created (unix s); trimmed with the jobs
  trtbatch:job:<job>                     HASH  metadata + counters (see common/store.py); result TTL
  trtbatch:job:<job>:results             HASH  image index -> result record (JSON); result TTL
  trtbatch:job:<job>:errors              HASH  image index -> record, failed images only; result TTL
  trtbatch:job:<job>:batches             HASH  batch no -> "done" | "dead:<reason>" | "failed:<code>";
                                               result TTL
  trtbatch:job:<job>:progress            STRING  producer resume cursor (JSON); result TTL
  trtbatch:job:<job>:timings             HASH  batch no -> BatchTimings (JSON, common/schemas.py): when each
                                               step of the batch ran on its worker; result TTL
  trtbatch:job:<job>:attempts            HASH  batch no -> deliveries, "<batch>:error" -> last error;
                                               result TTL
  trtbatch:job:<job>:accuracy            HASH  labelled jobs: "n:<label>" judged, "c:<label>" correct,
                                               "f:<label>" failed; result TTL
  trtbatch:job:<job>:workers             HASH  worker name -> images whose records it wrote; result TTL
  trtbatch:payload:<job>:<batch>         STRING  msgpack claim-check of one batch's image bytes;
                                               payload TTL, deleted once the batch is written
  trtbatch:payload:<job>:<n>:eval        STRING  calibration jobs: batch n of the evaluation images; payload
                                               TTL, deleted when the calibration job ends

Model artifacts (content-addressed, see common/artifacts.py)
  trtbatch:blob:<sha256>                 HASH  {"size", "chunks"}; no TTL
  trtbatch:blob:<sha256>:<n>             STRING  chunk n of the blob (<= 4 MiB); no TTL
  trtbatch:version:<version id>          HASH  {"name", "manifest", "files", "created", ...}; no TTL
  trtbatch:model:<name>:versions         ZSET  version id -> created; no TTL
  trtbatch:calib:<version>:<spec key>    HASH  {file name -> blob sha256} TensorRT calibration tables
  trtbatch:report:<version id>           STRING  quantization report (JSON); no TTL

Fleet
  trtbatch:workers                       ZSET  worker name -> last heartbeat (unix s)
  trtbatch:worker:<name>                 HASH  worker record (host, pid, device, precisions, ...);
                                               heartbeat TTL
  trtbatch:worker:<name>:slot:<n>        HASH  per-process state of one pipeline slot; heartbeat TTL
  trtbatch:worker:<name>:rate            ZSET  "<t>:<n>" -> t, images done per second; 120 s TTL

Orphan sweep (workers/process/orphans.py)
  trtbatch:orphans                       HASH  "<job>:<batch>" -> when first seen sent, unwritten and with no
                                               message (unix s); no TTL, fields removed by the next sweep
  trtbatch:orphans:lock                  STRING  taken by the worker sweeping now; expires within one interval

Broker (kombu, with ``global_keyprefix``)
  trtbatch:celery:<queue>                LIST  Celery messages of one capability queue
  trtbatch:celery:unacked                HASH  delivery tag -> message (kombu ack emulation)
  trtbatch:celery:unacked_index          ZSET  delivery tag -> lease time; renewed by workers/process/lease.py
  trtbatch:celery:unacked_mutex          STRING  kombu's restore mutex
"""

from __future__ import annotations

PREFIX = "trtbatch"
BROKER_PREFIX = f"{PREFIX}:celery:"
BROKER_UNACKED_INDEX = f"{BROKER_PREFIX}unacked_index"
BROKER_UNACKED = f"{BROKER_PREFIX}unacked"

JOBS = f"{PREFIX}:jobs"
WORKERS = f"{PREFIX}:workers"
ORPHANS = f"{PREFIX}:orphans"
ORPHANS_LOCK = f"{PREFIX}:orphans:lock"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def job_results(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:results"


def job_errors(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:errors"


def job_batches(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:batches"


def job_progress(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:progress"


def job_timings(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:timings"


def job_attempts(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:attempts"


def job_accuracy(job_id: str) -> str:
    """Hash of a labelled job's counts per class: ``n:<label>`` images judged, ``c:<label>`` correct,
    ``f:<label>`` failed (judged wrong); incremented by the result write for new records only."""
    return f"{PREFIX}:job:{job_id}:accuracy"


def job_workers(job_id: str) -> str:
    """Hash of the workers that wrote a job's records: worker name -> images (new records only)."""
    return f"{PREFIX}:job:{job_id}:workers"


def job_keys(job_id: str) -> list[str]:
    """Every key that belongs to a job except its payloads (those expire on their own)."""
    return [job(job_id), job_results(job_id), job_errors(job_id), job_batches(job_id),
            job_progress(job_id), job_attempts(job_id), job_timings(job_id), job_accuracy(job_id),
            job_workers(job_id)]


def payload(job_id: str, batch_no: int) -> str:
    """With ``"*"`` for either argument: a SCAN pattern."""
    return f"{PREFIX}:payload:{job_id}:{batch_no}"


def eval_payload(job_id: str, batch_no: int) -> str:
    return f"{payload(job_id, batch_no)}:eval"


def parse_payload(key: str | bytes) -> tuple[str, int] | None:
    """(job id, batch no) of an inference payload key; None for any other key (an eval payload)."""
    text = key.decode() if isinstance(key, bytes) else key
    head = f"{PREFIX}:payload:"
    if not text.startswith(head):
        return None
    job_id, _, batch = text[len(head):].rpartition(":")
    return (job_id, int(batch)) if job_id and batch.isdigit() else None


def blob(sha256: str) -> str:
    return f"{PREFIX}:blob:{sha256}"


def blob_chunk(sha256: str, n: int) -> str:
    return f"{PREFIX}:blob:{sha256}:{n}"


def version(version_id: str) -> str:
    return f"{PREFIX}:version:{version_id}"


def model_versions(name: str) -> str:
    return f"{PREFIX}:model:{name}:versions"


def calib_table(version_id: str, spec_key: str) -> str:
    return f"{PREFIX}:calib:{version_id}:{spec_key}"


def report(version_id: str) -> str:
    return f"{PREFIX}:report:{version_id}"


def worker(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


def worker_slot(name: str, slot: int) -> str:
    return f"{PREFIX}:worker:{name}:slot:{slot}"


def worker_rate(name: str) -> str:
    return f"{PREFIX}:worker:{name}:rate"


def broker_queue(queue: str) -> str:
    """The Redis list kombu keeps a queue's messages in (messages of the default priority)."""
    return f"{BROKER_PREFIX}{queue}"
