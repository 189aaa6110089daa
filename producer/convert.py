"""Conversion jobs from the producer side: a model version to its ONNX forms, on a capable worker.

A Paddle version is converted by a worker with Paddle and paddle2onnx (queue
``trtbatch.paddle.any.convert``); an ONNX version's FP16 form by any ONNX Runtime worker
(``trtbatch.onnxruntime.any.convert``). Check images (optional, a few dozen real inputs) are
uploaded like a calibration set; without them the worker checks on seeded random images.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from common import catalog, keys, routing
from common.celery_app import CONVERT_TASK
from common.schemas import ConvertTask, JobRecord
from producer.client import Client
from producer.inputs import check_inputs, iter_inputs
from producer.submit import _chunks, _payload, new_job_id, publish_local

MAX_CHECK_IMAGES = 64


@dataclass(frozen=True)
class ConvertOptions:
    model: str
    fp16: bool = True
    check_images: tuple[str, ...] = ()
    force: bool = False


def _upload_check_images(client: Client, job_id: str, paths: tuple[str, ...]) -> list[str]:
    out, start = [], 0
    items = itertools.islice(iter_inputs(paths), MAX_CHECK_IMAGES)
    for n, chunk in enumerate(_chunks(items, 16)):
        key = keys.payload(job_id, n)
        client.conn.set(key, _payload(chunk, start, client.settings.max_file_bytes).encode(),
                        ex=client.settings.payload_ttl_s)
        out.append(key)
        start += len(chunk)
    return out


def convert(client: Client, opts: ConvertOptions, job_id: str | None = None) -> str:
    check_inputs(opts.check_images)
    publish_local(client, opts.model, "int8" if "@" in opts.model else "fp32")
    vid = catalog.latest_version(client.artifacts, opts.model)
    manifest = client.artifacts.manifest(vid)
    queue = routing.convert_queue(manifest.format)
    job_id = job_id or new_job_id()
    client.store.create_job(JobRecord(job_id=job_id, kind="conversion", model=opts.model, version_id=vid,
                                      queue=queue, engine="onnxruntime"))
    payload_keys = _upload_check_images(client, job_id, opts.check_images)
    if client.store.mark_task_queued(job_id, n_images=0, n_batches=len(payload_keys)) != "queued":
        return job_id  # cancelled during the upload: no task
    task = ConvertTask(job_id=job_id, version_id=vid, model=opts.model, fp16=opts.fp16,
                       check_payload_keys=tuple(payload_keys), force=opts.force)
    client.app.send_task(CONVERT_TASK, args=[task.encode()], queue=queue)
    return job_id
