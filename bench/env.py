"""The benchmarks' private world: a redis-server of their own, the options of a run, the worker and
producer subprocesses, so nothing else competes with what is measured and nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.support import rss_sampler
from common.config import Settings
from common.embedded import server_binary
from producer.client import Client

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchOptions:
    model: str = "resnet50"
    precision: str = "fp32"
    batch_size: int = 16
    device: str = "cpu"
    threads: int = 2
    decode_threads: int = 0
    images: int = 960
    naive_images: int = 160
    #: JPEG sizes: "256" (256x256), "500x375", a mix "500x375,256x256"; auto: 500x375 on GPUs, 256 on CPUs
    image_size: str = "auto"
    bare_seconds: float = 10.0
    slots: int = 2
    calib_images: int = 64
    overlap_decode: str = "auto"
    engine: str = "paddle"
    gpu_decode: str = "auto"
    #: a peer system run on the same files, model, engine and batch size ("ray": Ray Data)
    peer: str = "none"
    peer_images: int = 0  # 0: as many as ours
    slot_pool: str = "auto"
    engine_stream: str = "default"
    gpu_decoders: int = 2
    prefetch_multiplier: int = 1
    gil_switch_interval_ms: float = 1.0
    gpu_jpeg_backend: str = "hybrid"
    timeline: str = ""  # also write every batch's step times here (JSON lines)
    py_spy: str = ""  # also write py-spy's GIL-holding stacks of the worker during e2e here

    @property
    def gpu(self) -> bool:
        return self.device.startswith("gpu")

    @property
    def sizes(self) -> str:
        return ("500x375" if self.gpu else "256") if self.image_size == "auto" else self.image_size

    @property
    def backend(self) -> str:
        """Where the job runs: CPU; on GPUs the CUDA path (ONNX Runtime's CUDA EP, native Paddle FP32) or
        TensorRT (Paddle's FP16/INT8, ONNX Runtime's INT8)."""
        if not self.gpu:
            return "cpu"
        if self.engine == "onnxruntime":
            return "trt" if self.precision == "int8" else "gpu"
        return "gpu" if self.precision == "fp32" else "trt"


class BenchEnv:
    """A private redis-server, model repository access and environment for subprocesses."""

    def __init__(self, base: Settings, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "redis.sock"
        self.redis = subprocess.Popen([server_binary(), "--port", "0", "--unixsocket", str(self.socket),
                                       "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.settings = base.replace(redis_url=f"unix://{self.socket}", state_dir=workdir / "state")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRTBATCH_")}
        self.env.update(TRTBATCH_REDIS_URL=self.settings.redis_url or "", PYTHONUNBUFFERED="1",
                        TRTBATCH_MODEL_REPO=str(base.model_repo), TRTBATCH_CACHE_DIR=str(base.cache_dir),
                        TRTBATCH_STATE_DIR=str(workdir / "state"),
                        PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.client = Client(self.settings)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.client.conn.ping()
                return
            except Exception:
                self.__dict__.pop("client", None)
                self.client = Client(self.settings)
                time.sleep(0.1)
        raise RuntimeError("bench redis-server did not start")

    def start_worker(self, opts: BenchOptions, warm: str | list[str]) -> subprocess.Popen:
        kind = "gpu" if opts.device.startswith("gpu") else "cpu"
        cmd = [sys.executable, "-m", "bench.worker", "--device", kind, "--name", "bench@local", "--threads",
               str(opts.threads), "--slots", str(opts.slots), "--loglevel", "WARNING"]
        for entry in [warm] if isinstance(warm, str) else warm:
            cmd += ["--warm", entry]
        env = dict(self.env)
        env["TRTBATCH_OVERLAP_DECODE"] = opts.overlap_decode
        env["TRTBATCH_GPU_DECODE"] = opts.gpu_decode
        env["TRTBATCH_SLOT_POOL"] = opts.slot_pool
        env["TRTBATCH_GPU_ENGINE_STREAM"] = opts.engine_stream
        env["TRTBATCH_GPU_DECODERS"] = str(opts.gpu_decoders)
        env["TRTBATCH_PREFETCH_MULTIPLIER"] = str(opts.prefetch_multiplier)
        env["TRTBATCH_GIL_SWITCH_INTERVAL_MS"] = str(opts.gil_switch_interval_ms)
        env["TRTBATCH_GPU_JPEG_BACKEND"] = opts.gpu_jpeg_backend
        if kind == "gpu":
            index = opts.device.split(":", 1)[1] if ":" in opts.device else "0"
            cmd += ["--gpu-index", index]
            env["CUDA_VISIBLE_DEVICES"] = index
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if opts.decode_threads:
            cmd += ["--decode-threads", str(opts.decode_threads)]
        log = open(self.workdir / "worker.log", "ab")  # noqa: SIM115  # owned by the child
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"bench worker exited: {(self.workdir / 'worker.log').read_text()[-3000:]}")
            if any(w.name == "bench@local" and w.state == "ready" for w in self.client.live_workers()):
                return proc
            time.sleep(0.2)
        raise RuntimeError("bench worker did not become ready")

    def close(self) -> None:
        self.client.close()
        self.redis.send_signal(signal.SIGTERM)
        self.redis.wait(10)


def run_producer(env: BenchEnv, args: list[str]) -> tuple[str, float, int]:
    """Run `trtbatch <args>` as a subprocess; returns (stdout, wall seconds, peak RSS bytes)."""
    cmd = [sys.executable, "-m", "cli", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    sampler = rss_sampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"trtbatch {' '.join(args)} failed ({proc.returncode}): {out[-2000:]} {err[-2000:]}")
    return out.decode(), wall, peak


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
