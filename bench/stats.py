"""Per-batch pipeline timings of a benchmark job, from the worker's own records (``BatchTimings``)."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from common import keys
from common.schemas import BatchTimings, PipelineMode
from producer.client import Client


def _images(client: Client, job_id: str) -> int:
    return int(client.conn.hget(keys.job(job_id), "n_images") or 0)


def write_timeline(client: Client, job_id: str, path: str) -> None:
    """Every batch's steps (s since the job was created) and slot, one JSON line per batch, in order of
    its inference: where a slot's time goes, and when the device waited."""
    import json

    created = float(client.conn.hget(keys.job(job_id), "created_s") or 0)  # 0: unix times, as stored
    rows = sorted((BatchTimings.decode(v) for v in client.conn.hvals(keys.job_timings(job_id))),
                  key=lambda r: r.infer_start_s)
    steps = ("started_s", "fetched_s", "decode_start_s", "decode_end_s", "infer_start_s", "infer_end_s",
             "postprocessed_s")
    with open(path, "a") as fh:
        for r in rows:
            fh.write(json.dumps({"job": job_id, "pid": r.pid, "slot": r.slot,
                                 **{s: round(getattr(r, s) - created, 4) for s in steps}}) + "\n")


def steady_state(rows: list[BatchTimings], client: Client, job_id: str) -> dict[str, float]:
    """The job's pace once it runs: images/s over its middle 80 % of batches (by when their inference
    ended) - what a long job gets - and how long its start and its end took beside that pace:
    ``startup_s`` job created -> first inference started, ``tail_s`` last inference -> job finished."""
    created, finished, n_images = client.conn.hmget(keys.job(job_id), "created_s", "finished_s", "n_images")
    if len(rows) < 10 or not created:
        return {}
    ends = sorted(r.infer_end_s for r in rows)
    lo, hi = len(ends) // 10, len(ends) - 1 - len(ends) // 10
    per_batch = int(n_images or 0) / len(rows)
    out = {"steady_images_per_s": (hi - lo) * per_batch / (ends[hi] - ends[lo]),
           "startup_s": min(r.infer_start_s for r in rows) - float(created)}
    if finished:
        out["tail_s"] = float(finished) - ends[-1]
    return out


def batch_stats(client: Client, job_id: str, e2e_ms_per_batch: float) -> dict[str, float]:
    """Per-batch pipeline timings from the worker's records (ms; ``BatchTimings``, common/schemas.py).

    * device idle: time between consecutive predictor runs on the device;
    * delivery gap (per slot: pid and slot number): postprocessing done -> next batch started: result
      write, Celery ack, next message;
    * queue overhead per batch: on a shared device (GPU), end-to-end time per batch minus what the
      device must do anyway - predictor run, plus decoding when it happens under the device lock -
      i.e. what Redis, Celery and the producer add to the critical path; on a CPU worker whose slots
      own their cores, a slot's payload fetch plus its delivery gap.
    """
    rows = sorted((BatchTimings.decode(v) for v in client.conn.hvals(keys.job_timings(job_id))),
                  key=lambda r: r.infer_start_s)
    mean = statistics.fmean
    out: dict[str, Any] = {"batches": len(rows), "fetch_ms": mean(1000 * (r.fetched_s - r.started_s) for r in rows),
                           "decode_ms": mean(1000 * (r.decode_end_s - r.decode_start_s) for r in rows),
                           "infer_ms": mean(1000 * (r.infer_end_s - r.infer_start_s) for r in rows),
                           "postprocess_ms": mean(1000 * (r.postprocessed_s - r.infer_end_s) for r in rows)}
    idle = [1000 * max(0.0, b.infer_start_s - a.infer_end_s) for a, b in itertools.pairwise(rows)]
    out["device_idle_ms_per_batch"] = mean(idle) if idle else 0.0
    by_slot: dict[tuple[int, int], list[BatchTimings]] = {}
    for r in rows:
        by_slot.setdefault((r.pid, r.slot), []).append(r)
    gaps = [1000 * (b.started_s - a.postprocessed_s) for runs in by_slot.values()
            for a, b in itertools.pairwise(sorted(runs, key=lambda r: r.started_s))]
    out["delivery_gap_ms"] = statistics.median(gaps) if gaps else 0.0
    mode = rows[0].mode
    if mode is PipelineMode.PARTITIONED:  # CPU slots each own their cores: the queue's share of a slot's cycle
        out["queue_overhead_ms_per_batch"] = out["fetch_ms"] + out["delivery_gap_ms"]
    else:  # one shared device: what the queue adds to its critical path
        critical = out["infer_ms"] + (out["decode_ms"] if mode is PipelineMode.DECODE_UNDER_LOCK else 0.0)
        out["queue_overhead_ms_per_batch"] = max(0.0, e2e_ms_per_batch - critical)
    out.update(steady_state(rows, client, job_id))
    out["pipeline_mode"] = mode.value
    out["h2d_bytes_per_batch"] = mean(r.h2d_bytes for r in rows)
    out["gpu_decoded_fraction"] = sum(r.gpu_decoded for r in rows) / max(1, _images(client, job_id))
    return out



