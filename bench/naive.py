"""The naive baseline the throughput benchmark compares against - never used for real jobs.

Registered only by benchmark workers (``python -m bench.worker``), never by ``trtbatch worker``.

It is how a Celery tutorial would do batch inference: the image bytes travel inside the Celery
message (msgpack, so bytes need no base64), the task decodes its one image and runs the predictor
at batch 1, and writes its result. Same predictor, same result store, same worker process as the
real path, so the difference is only the data path and the batching.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from common import keys
from common.imaging import Preprocessor
from common.schemas import ResultRecord
from workers.pipeline import context, postprocess
from workers.pipeline.predictors import manifest_of, predictor_for_spec

NAIVE_TASK = "trtbatch.naive_infer"


def naive_infer(message: dict[str, Any]) -> None:
    ctx = context.current()
    manifest = manifest_of(ctx, message["version_id"])
    backend, engine = message.get("backend", "cpu"), message.get("engine", "paddle")
    predictor = predictor_for_spec(ctx, message["version_id"], manifest, backend, message["precision"], 1,
                                   message.get("int8_source"), engine)
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, ctx.settings.max_image_pixels)
    array = pre(message["data"]).array[None]
    with ctx.lock.hold():
        outputs = predictor.run(array)
    post = postprocess.postprocess(outputs, manifest.postprocess)[0]
    rec = ResultRecord(index=message["index"], path=message["path"], ok=True, top_k=post.get("top_k"),
                       job_id=message["job_id"], batch_no=message["index"], precision=message["precision"],
                       engine=engine, backend=backend, worker=ctx.identity.name, device=ctx.identity.device_label)
    # no claim-check payload exists (the bytes came in the message): the write deletes a missing key
    ctx.store.write_batch(message["job_id"], message["index"], [rec], keys.payload(message["job_id"], message["index"]))


@shared_task(name=NAIVE_TASK, bind=True, acks_late=True, ignore_result=True, serializer="msgpack")
def naive_task(self: Task, message: dict[str, Any]) -> None:
    naive_infer(message)
