"""Calibration jobs from the producer side: upload the calibration (and evaluation) images, send
one task to one capable worker, and, when it finishes, pull a new quantized version into the local
repository so `models list/show` see it on this machine too.

The images are checked here, before a job exists: fewer decodable images than the method's minimum
(``MIN_IMAGES``) among those the job would use is an ``InputError`` naming the paths and the count,
so an empty folder or a folder of non-images leaves no job behind. The worker checks again (a
payload may expire, a file may change between the check and the upload).
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import catalog, keys, routing
from common.calibration import METHODS, MIN_IMAGES, PTQ_ALGOS, RECOMMENDED_IMAGES
from common.celery_app import CALIBRATE_TASK
from common.config import Settings
from common.errors import CalibrationError, ImageError, InputError
from common.imaging import Preprocessor
from common.manifest import ModelManifest
from common.schemas import CalibTask, JobRecord
from producer.client import Client
from producer.inputs import check_inputs, display_path, iter_inputs, read_bytes
from producer.submit import _chunks, _payload, new_job_id, publish_local


@dataclass(frozen=True)
class CalibrateOptions:
    model: str
    images: tuple[str, ...]
    method: str = "ptq"
    algo: str = "hist"
    samples: int = 0
    eval_paths: tuple[str, ...] = ()
    batch_size: int = 16
    threshold_pt: float = 1.0
    engine: str = "paddle"


def _check(opts: CalibrateOptions) -> None:
    if opts.method not in METHODS:
        raise InputError(f"unknown method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.engine not in ("paddle", "onnxruntime"):
        raise InputError(f"unknown engine {opts.engine!r}; choose paddle or onnxruntime")
    if opts.engine == "onnxruntime" and opts.method != "trt":
        raise InputError("with --engine onnxruntime the method is trt (a TensorRT table from ONNX Runtime's "
                         "calibrator); offline quantization (ptq) is Paddle's: its result serves ONNX Runtime "
                         "once converted (`trtbatch convert --model MODEL@int8-ptq`)")
    if opts.method == "ptq" and opts.algo not in PTQ_ALGOS:
        raise InputError(f"unknown algorithm {opts.algo!r}; choose one of {', '.join(PTQ_ALGOS)}")
    if opts.batch_size < 1 or opts.samples < 0:
        raise InputError("--batch-size must be >= 1 and --samples >= 0")
    if not opts.images:
        raise InputError("give calibration images with --images")
    check_inputs(opts.images)
    if opts.eval_paths:
        check_inputs(opts.eval_paths)


def count_decodable(settings: Settings, manifest: ModelManifest, paths: tuple[str, ...], limit: int, need: int
                    ) -> tuple[int, int]:
    """(decodable images, inputs looked at) among the first ``limit`` inputs (0 = all), stopping at
    ``need`` decodable ones: decoded exactly as the worker will (the manifest's preprocessing and the
    pixel limit), so an image that passes here is not dropped there."""
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, settings.max_image_pixels,
                       settings.strict_image_modes)
    items = iter_inputs(paths)
    good = seen = 0
    for item in itertools.islice(items, limit) if limit else items:
        seen += 1
        data, _ = read_bytes(item.path, settings.max_file_bytes)
        try:
            pre(data)
        except ImageError:
            continue
        good += 1
        if good >= need:
            break
    return good, seen


def check_images(client: Client, opts: CalibrateOptions, manifest: ModelManifest) -> None:
    """Refuse a calibration set with fewer decodable images than the method needs (and an evaluation
    set with none), before any job or payload exists."""
    need, limit = MIN_IMAGES[opts.method], opts.samples or RECOMMENDED_IMAGES[opts.method]
    good, seen = count_decodable(client.settings, manifest, opts.images, limit, need)
    if good < need:
        where = ", ".join(display_path(p) for p in opts.images)
        cut = opts.samples and opts.samples == seen
        used = f" (--samples {opts.samples} uses only the first {opts.samples})" if cut else ""
        raise InputError(f"calibration images {where}: {good} decodable image(s) found in {seen} image file(s)"
                         f"{used}; {opts.method} calibration needs at least {need}: point --images at more")
    if opts.eval_paths and count_decodable(client.settings, manifest, opts.eval_paths, 0, 1)[0] == 0:
        where = ", ".join(display_path(p) for p in opts.eval_paths)
        raise InputError(f"evaluation images {where}: no decodable image found; give --eval images the model can read")


def _upload(client: Client, job_id: str, evaluation: bool, paths: tuple[str, ...], limit: int, batch: int
            ) -> tuple[list[str], int]:
    items = iter_inputs(paths)
    if limit:
        items = itertools.islice(items, limit)
    payload_keys, n = [], 0
    for i, chunk in enumerate(_chunks(items, batch)):
        key = keys.eval_payload(job_id, i) if evaluation else keys.payload(job_id, i)
        payload = _payload(chunk, n, client.settings.max_file_bytes)
        client.conn.set(key, payload.encode(), ex=client.settings.payload_ttl_s)
        payload_keys.append(key)
        n += len(chunk)
    return payload_keys, n


def calibrate(client: Client, opts: CalibrateOptions, job_id: str | None = None) -> str:
    _check(opts)
    publish_local(client, opts.model, "fp32")
    vid = catalog.latest_version(client.artifacts, opts.model)
    manifest = client.artifacts.manifest(vid)
    if manifest.quantized:
        raise CalibrationError(f"{opts.model} is already quantized; calibrate its FP32 base model")
    if opts.engine == "onnxruntime" and catalog.onnx_form(client.artifacts, vid, manifest, "fp32") is None:
        raise CalibrationError(f"{opts.model} ({vid}) has no ONNX form to calibrate; make it first with "
                               f"`trtbatch convert --model {opts.model} --wait`")
    check_images(client, opts, manifest)
    batch = min(opts.batch_size, manifest.max_batch_size)
    queue = routing.calibration_queue(opts.method, opts.engine)
    job_id = job_id or new_job_id()
    client.store.create_job(JobRecord(job_id=job_id, kind="calibration", model=opts.model, version_id=vid,
                                      precision="int8", target="trt" if opts.method == "trt" else "any",
                                      queue=queue, method=opts.method, algo=opts.algo, batch_size=batch,
                                      engine=opts.engine))  # type: ignore[arg-type]
    limit = opts.samples or RECOMMENDED_IMAGES[opts.method]
    calib_keys, n = _upload(client, job_id, False, opts.images, limit, batch)
    eval_keys, n_eval = _upload(client, job_id, True, opts.eval_paths, 0, batch) if opts.eval_paths else ([], 0)
    if client.store.mark_task_queued(job_id, eval_images=n_eval, n_images=n, n_batches=len(calib_keys)) != "queued":
        return job_id  # cancelled during the upload: no task
    task = CalibTask(job_id=job_id, version_id=vid, model=opts.model, method=opts.method, algo=opts.algo,
                     payload_keys=tuple(calib_keys), eval_payload_keys=tuple(eval_keys), batch_size=batch,
                     samples=limit, drop_threshold_pt=opts.threshold_pt, engine=opts.engine)  # type: ignore[arg-type]
    client.app.send_task(CALIBRATE_TASK, args=[task.encode()], queue=queue)
    return job_id


def pull_version(client: Client, name: str, version_id: str) -> Path:
    """Install a published version into the local repository (e.g. a new ``M@int8-ptq``)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = client.artifacts.materialize(version_id, Path(tmp))
        return client.repo.install(folder, ModelManifest.load(folder), overwrite=True)
