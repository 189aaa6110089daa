"""One Celery worker bound to one device: ``python -m workers.process.main --device cpu|gpu --name ...``.

Started by the launcher (``trtbatch worker``), which pins ``CUDA_VISIBLE_DEVICES`` for GPU
workers. This process never loads an engine: it probes the node in a subprocess, picks its
queues from what the node can serve, and starts ``--slots`` pool processes that each build their
own predictors (workers/process/runtime.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid

from common import redisconn
from common.celery_app import make_app
from common.config import Settings
from common.errors import ConfigError, TrtbatchError
from common.node import NodeInfo
from common.routing import worker_queues
from workers.engines import probe
from workers.engines.paddle_engine import set_openmp_env
from workers.pipeline.context import IDENTITY_ENV, WorkerIdentity
from workers.pipeline.tasks import register
from workers.process import health, metrics, runtime
from workers.process.heartbeat import HeartbeatStep
from workers.process.launcher import default_name
from workers.process.lease import LeaseStep
from workers.process.orphans import OrphanStep
from workers.process.warm import WarmGate

log = logging.getLogger("trtbatch.worker")


def probe_node(settings: Settings, gpu: bool, gpu_index: int) -> NodeInfo:
    """What this process's node serves; GPU self-test findings applied as ``gpu_selftest`` says:
    enforce drops the GPU capabilities of an engine that computes wrong results (and refuses to
    start if no capability is left), warn keeps them, off does not test."""
    if settings.gpu_selftest not in ("enforce", "warn", "off"):
        raise ConfigError(f"gpu_selftest must be enforce, warn or off, got {settings.gpu_selftest!r}")
    node = probe.detect_in_subprocess(gpu=gpu, selftest=gpu and settings.gpu_selftest != "off")
    if not gpu:
        return node
    for engine, ok, detail in (("Paddle " + node.paddle_version, node.gpu_selftest_ok, node.gpu_selftest),
                               ("ONNX Runtime " + node.ort_version, node.ort_gpu_selftest_ok, node.ort_gpu_selftest)):
        if ok is False:
            log.warning("GPU %d (%s, compute capability %s) gives wrong results with %s: %s; %s", gpu_index,
                        node.gpu_name, node.gpu_compute_capability, engine, detail,
                        "serving it anyway (gpu_selftest=warn)" if settings.gpu_selftest == "warn"
                        else "that engine will not serve this GPU (docs/operations.md)")
    if settings.gpu_selftest == "warn":
        node = probe.without_selftest_verdicts(node)
    if not node.capabilities("gpu"):
        reasons = "; ".join(f"{e}: {node.why_not(e, 'gpu', 'fp32')}" for e in ("onnxruntime", "paddle"))
        raise ConfigError(f"--device gpu:{gpu_index}: no engine can serve this GPU ({reasons}); refusing to start")
    return node


def check_slot_settings(settings: Settings) -> None:
    """The settings of how slots run that no other check covers: refused at start, with the value."""
    if settings.gpu_engine_stream not in ("default", "own"):
        raise ConfigError(f"gpu_engine_stream must be default or own, got {settings.gpu_engine_stream!r}")
    if settings.prefetch_multiplier < 1:  # Celery reads 0 as no limit at all
        raise ConfigError(f"prefetch_multiplier must be 1 or more, got {settings.prefetch_multiplier}")
    if not 0 < settings.gil_switch_interval_ms < 1000:  # NaN too; sys.setswitchinterval takes seconds
        raise ConfigError(f"gil_switch_interval_ms must be above 0 and below 1000, "
                          f"got {settings.gil_switch_interval_ms}")
    if settings.gpu_decoders < 1:
        raise ConfigError(f"gpu_decoders must be 1 or more, got {settings.gpu_decoders}")
    if settings.gpu_jpeg_backend not in ("hybrid", "hardware"):
        raise ConfigError(f"gpu_jpeg_backend must be hybrid or hardware, got {settings.gpu_jpeg_backend!r}")


def share_gil(settings: Settings, ident: WorkerIdentity) -> None:
    """Thread slots share this process's GIL: hand it over every ``gil_switch_interval_ms``."""
    if ident.thread_slots:
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


def build_identity(settings: Settings, args: argparse.Namespace) -> WorkerIdentity:
    gpu = args.device == "gpu"
    check_slot_settings(settings)
    threads_pool = thread_slots(settings.slot_pool)
    node = probe_node(settings, gpu, args.gpu_index)
    caps = frozenset(node.capabilities(args.device))
    if not caps:
        raise ConfigError(f"--device {args.device}: no engine is installed here "
                          f"({node.why_not('paddle', 'cpu', 'fp32')}; {node.why_not('onnxruntime', 'cpu', 'fp32')})")
    queues = worker_queues(caps, node.convert_from)
    for extra in args.queues or []:
        if extra not in queues:
            queues.append(extra)
    threads = args.threads or settings.cpu_threads or (os.cpu_count() or 1)
    prefix = f"gpu{args.gpu_index}" if gpu else "cpu"
    name = args.name or default_name(prefix, os.getpid())  # started without the launcher: it is its own
    lock = settings.cache_dir / "locks" / f"{name.replace('/', '_')}.lock"
    slots = args.slots or settings.pipeline_slots
    # GPU: the slots share one device under a lock, decoding on many threads while the other slot
    # infers. CPU: the cores are split between the slots, one predictor per slot (measured faster than
    # one predictor on all cores, and decoding then never preempts a predictor's OpenMP threads).
    predictor_threads = threads if gpu else max(1, threads // slots)
    decode_threads = args.decode_threads or settings.decode_threads or (threads if gpu else predictor_threads)
    return WorkerIdentity(name=name, device=args.device, gpu_index=args.gpu_index if gpu else None,
                          gpu_decode=gpu_decode(settings.gpu_decode, gpu, node),
                          cpu_threads=threads, slots=slots, decode_threads=decode_threads,
                          overlap_decode=overlap(settings.overlap_decode, gpu, threads, decode_threads),
                          predictor_threads=predictor_threads, shared_device=gpu or slots == 1,
                          capabilities=caps, queues=tuple(queues), node=node, lock_path=str(lock),
                          warm=tuple(args.warm or ()), start_id=uuid.uuid4().hex[:12],
                          thread_slots=threads_pool,
                          gpu_decoder_pool=min(settings.gpu_decoders, slots) if threads_pool else 0)


def gpu_decode(setting: str, gpu: bool, node: NodeInfo) -> bool:
    """Decode on the GPU? Only GPU workers, and only for ONNX Runtime's GPU predictors (which take
    device batches); ``auto`` when nvImageCodec and CuPy are installed."""
    from workers.pipeline.gpu_decode import available

    if setting not in ("auto", "on", "off"):
        raise ConfigError(f"gpu_decode must be auto, on or off, got {setting!r}")
    if not gpu or setting == "off" or not node.ort_cuda:
        return False
    if setting == "on" and not available():
        raise ConfigError("gpu_decode=on, but nvImageCodec and CuPy do not load here "
                          "(pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg cupy-cuda13x)")
    return available()


def overlap(setting: str, gpu: bool, threads: int, decode_threads: int) -> bool:
    """Decode batch k+1 while batch k runs? Always on GPU workers. On CPU workers only when the
    predictor leaves cores free: with every core in the predictor, concurrent decoding makes its
    OpenMP threads straggle at each barrier and costs more than it hides (measured, see README)."""
    if setting not in ("auto", "on", "off"):
        raise ConfigError(f"overlap_decode must be auto, on or off, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    return gpu or threads + decode_threads <= (os.cpu_count() or 1)


def thread_slots(setting: str) -> bool:
    """Slots as threads of one process (Celery's threads pool) or as pool processes (prefork)?

    Processes unless asked otherwise. Threads give a GPU's slots one CUDA context and one shared JPEG
    decoder, but measured on the H200 (ResNet50 FP16, batch 128, 500x375 JPEGs, GPU decode) they
    were no faster - 3,000-3,400 img/s against 3,300 with four processes - because the decoder's GPU
    work is what waits beside inference, and with Pillow decoding the GIL halved them (1,097 against
    2,306 img/s); processes also keep Celery's hard time limit. ``auto`` is processes."""
    if setting not in ("auto", "threads", "processes"):
        raise ConfigError(f"slot_pool must be auto, threads or processes, got {setting!r}")
    return setting == "threads"


def start_method(setting: str, device: str) -> str:
    """How pool processes start. GPU workers spawn fresh interpreters, so no CUDA or Paddle state can
    cross a fork (on H200 the first GPU build in a forked pool process hit CUDA error 209). CPU
    workers fork (faster start)."""
    if setting not in ("auto", "fork", "spawn"):
        raise ConfigError(f"pool_start_method must be auto, fork or spawn, got {setting!r}")
    if setting != "auto":
        return setting
    return "spawn" if device == "gpu" else "fork"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workers.process.main")
    p.add_argument("--device", choices=("cpu", "gpu"), required=True)
    p.add_argument("--gpu-index", type=int, default=0, help="physical GPU index (for records)")
    p.add_argument("--name")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--decode-threads", type=int, default=0)
    p.add_argument("--slots", type=int, default=0)
    p.add_argument("--queues", action="append")
    p.add_argument("--warm", action="append")
    p.add_argument("--loglevel", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    set_openmp_env()  # before any pool process imports Paddle
    level = (args.loglevel or settings.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    try:
        # configuration first (pickle, credentials, TLS): refuse before probing the hardware
        url = redisconn.resolve_url(settings)
        app = make_app(settings, url, accept_content=settings.celery_accept_content.split(","),
                       worker_pool_start_method=start_method(settings.pool_start_method, args.device))
        redisconn.check_access(settings, url)
        ident = build_identity(settings, args)
        if settings.metrics_port:
            metrics.prepare_dir(settings.state_dir, ident.name)
        runtime.configure(settings, ident)
        os.environ[IDENTITY_ENV] = ident.encode()
    except TrtbatchError as exc:
        log.error("%s", exc)
        return 2
    register(app)
    share_gil(settings, ident)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, redisconn.client(settings), ident.name, ident.queues)
    record = health.write_pidfile(settings, ident.name, settings.metrics_port, url)
    app.steps["consumer"].add(LeaseStep)
    app.steps["consumer"].add(OrphanStep)
    app.steps["consumer"].add(HeartbeatStep)
    app.steps["worker"].add(WarmGate)
    log.info("worker %s on %s serving %s", ident.name, ident.device_label, ", ".join(ident.queues))
    worker = app.Worker(hostname=ident.name, pool_cls="threads" if ident.thread_slots else "prefork",
                        concurrency=ident.slots,
                        queues=list(ident.queues), loglevel=level, optimization="fair",
                        without_heartbeat=True, without_mingle=True, without_gossip=True)
    try:
        worker.start()
    finally:
        health.remove_pidfile(record)
    return int(worker.exitcode or 0)


if __name__ == "__main__":
    sys.exit(main())
