"""Where a GPU worker's JPEG decoding spends its time (docs/gpu-verification.md, "Where the time goes").

One process, on a GPU with nvImageCodec, CuPy and onnxruntime-gpu; prints one JSON line:

* ``decode_ms``: ``GpuDecoder.decode`` of a batch alone (nvImageCodec + the resize kernels);
* ``decoders_at_once``: N decoders, each in its own thread, decoding at the same time (ms per batch, img/s);
* ``infer_ms``: the ONNX model alone on a device batch (IO binding), on ONNX Runtime's default streams
  and on a stream of its own (``gpu_engine_stream = own``);
* ``beside_inference``: decode while another thread runs inference back to back, per stream mode,
  with the part inside nvImageCodec, and inference's own time meanwhile;
* ``beside_matmul_ms``: decode beside a CuPy matmul loop (GPU work that is not ONNX Runtime);
* ``gil_share``: what a pure-Python counter thread gets while decoding runs, against alone;
* ``backends`` (``--parts backends``): nvImageCodec restricted to one backend at a time (hardware JPEG
  engine, hybrid CPU/GPU, GPU only): how many images of a batch it takes, ms per batch alone and beside
  inference - which backend a worker's decoder really uses;
* ``pipeline`` (``--parts pipeline``): what a worker's slots do, in one process: D decoders in D
  threads feeding device batches to inference that runs one batch at a time (the device lock) -
  images/s for D = 1..4, with the decoders' streams at high priority, and with two engines unlocked.

    python3 bench/gpu_decode_probe.py --images DIR_OF_JPEGS --model resnet50.onnx [--batch-size 128]
        [--parts basic,backends,pipeline]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.imaging import Preprocessor
from common.manifest import Preprocess
from common.schemas import PayloadItem


def _step(what: str) -> None:
    """Progress on stderr: a native crash (nvImageCodec, ONNX Runtime) then shows which step it ended."""
    print(f"probe: {what}", file=sys.stderr, flush=True)


def _no_pillow(items: list[PayloadItem]) -> Any:
    raise RuntimeError(f"{len(items)} images went the Pillow path; the probe wants GPU-decodable JPEGs")


def _ms_per_call(fn, seconds: float = 2.5) -> float:
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn(n)
        n += 1
    return round(1000 * (time.perf_counter() - started) / n, 2)


def _session(ort: Any, cp: Any, model: str, own_stream: bool) -> tuple[Any, Any]:
    # as the worker's FP16 CUDA EP predictor (workers/engines/ort_config.py)
    opts: dict[str, str] = {"device_id": "0", "prefer_nhwc": "1", "arena_extend_strategy": "kSameAsRequested"}
    stream = cp.cuda.Stream(non_blocking=True) if own_stream else None
    if stream is not None:
        opts.update(user_compute_stream=str(stream.ptr), do_copy_in_default_stream="0")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=[("CUDAExecutionProvider", opts), "CPUExecutionProvider"]), stream


def _runner(session: Any):
    name, outputs = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]

    def run(tensor: Any) -> None:
        binding, cai = session.io_binding(), tensor.__cuda_array_interface__
        binding.bind_input(name, "cuda", 0, np.float32, list(cai["shape"]), cai["data"][0])
        for out in outputs:
            binding.bind_output(out, "cuda", 0)
        session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()
    return run


def _beside(work, measure) -> tuple[float, float]:
    """Run ``work`` in a loop on a thread while ``measure`` is timed; (measure ms, work ms per call)."""
    stop, calls = threading.Event(), [0]

    def loop() -> None:
        while not stop.is_set():
            work()
            calls[0] += 1
    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(0.3)
    first, started = calls[0], time.perf_counter()
    ms = measure()
    other = 1000 * (time.perf_counter() - started) / max(1, calls[0] - first)
    stop.set()
    thread.join()
    return ms, round(other, 2)


PARTS = ("basic", "backends", "pipeline")
#: nvImageCodec backend of the probe's decoders (--jpeg-backend); the figures in docs/gpu-verification.md
#: were measured with the hardware engine first, as workers then decoded
_BACKEND = ["hardware"]


def _decoder(pre: Preprocessor, cpu_threads: int) -> Any:
    from workers.pipeline.gpu_decode import GpuDecoder

    return GpuDecoder(pre, 0, cpu_threads, _BACKEND[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--model", required=True, help="An ONNX classifier taking [N, 3, 224, 224] float32.")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--parts", default="basic", help=f"Comma-separated, of: {', '.join(PARTS)}.")
    parser.add_argument("--jpeg-backend", choices=("hardware", "hybrid"), default="hardware")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))} (choose from {', '.join(PARTS)})")
    _BACKEND[0] = args.jpeg_backend
    import cupy as cp
    import onnxruntime as ort

    ort.preload_dlls()
    files = sorted(args.images.glob("*.jpg"))[:4 * args.batch_size]
    items = [PayloadItem(i, str(p), p.read_bytes()) for i, p in enumerate(files)]
    pre = Preprocessor(Preprocess(), (3, 224, 224), 10**8)
    size = args.batch_size

    def batch(k: int) -> list[PayloadItem]:
        return items[(k % 4) * size:(k % 4 + 1) * size]
    _step("decoder")
    decoder = _decoder(pre, 15)
    tensor = decoder.decode(batch(0), _no_pillow).tensor
    _step("first batch decoded")
    out: dict[str, Any] = {"probe": "gpu_decode", "jpeg_backend": args.jpeg_backend, "images": len(items),
                           "batch_size": size,
                           "decode_ms": _ms_per_call(lambda k: decoder.decode(batch(k), _no_pillow))}
    _step("decode alone timed")
    if "backends" in parts:
        out["backends"] = _backends(ort, cp, args.model, pre, batch, tensor)
    if "pipeline" in parts:
        out["pipeline"] = _pipelines(ort, cp, args.model, pre, batch)
    if "basic" in parts:
        _basic(out, ort, cp, args.model, pre, batch, decoder, tensor)
    print(json.dumps(out))
    _close([decoder])


def _basic(out: dict[str, Any], ort: Any, cp: Any, model: str, pre: Preprocessor, batch, decoder: Any,
           tensor: Any) -> None:
    """Decoders at once, inference alone and beside decoding per stream mode, a matmul beside, the GIL."""
    out["decoders_at_once"] = {str(n): _at_once(pre, batch, n) for n in (1, 2, 4)}
    out["infer_ms"], out["beside_inference"] = {}, {}
    for mode in ("default", "own"):
        out["infer_ms"][mode], out["beside_inference"][mode] = _engine_mode(ort, cp, model, mode, decoder,
                                                                             batch, tensor)
    a, stream = cp.random.random((4096, 4096), cp.float32), cp.cuda.Stream(non_blocking=True)

    def matmul() -> None:
        with stream:
            a @ a
            stream.synchronize()
    out["beside_matmul_ms"] = _beside(matmul, lambda: _ms_per_call(lambda k: decoder.decode(batch(k), _no_pillow)))[0]
    out["gil_share"] = _gil_share(lambda k: decoder.decode(batch(k), _no_pillow))


def _close(decoders: list[Any]) -> None:
    """Free the decoders before the interpreter exits (as a worker does at shutdown)."""
    for d in [*decoders, *_KEEP]:
        d.close()
    _KEEP_RAW.clear()
    _step("decoders closed")


def _engine_mode(ort: Any, cp: Any, model: str, mode: str, decoder: Any, batch, tensor: Any
                 ) -> tuple[float, dict[str, float]]:
    """Inference alone, then decoding beside it (and how much of that is inside nvImageCodec)."""
    session, stream = _session(ort, cp, model, mode == "own")
    _STREAMS.append(stream)  # the session runs on it: it must outlive the session
    run = _runner(session)
    for _ in range(5):
        run(tensor)
    alone = _ms_per_call(lambda _: run(tensor))
    in_codec: list[float] = []
    inner = decoder._decode_jpegs

    def timed(datas: list[bytes]) -> Any:
        started = time.perf_counter()
        images = inner(datas)
        decoder.stream.synchronize()
        in_codec.append(time.perf_counter() - started)
        return images
    decoder._decode_jpegs = timed
    try:
        ms, infer_ms = _beside(lambda: run(tensor),
                               lambda: _ms_per_call(lambda k: decoder.decode(batch(k), _no_pillow)))
    finally:
        decoder._decode_jpegs = inner
    return alone, {"decode_ms": ms, "of_which_nvimagecodec_ms": round(1000 * sum(in_codec) / len(in_codec), 2),
                   "infer_ms": infer_ms}


def _at_once(pre: Preprocessor, batch, n: int, reps: int = 8) -> dict[str, float]:
    decoders = [_decoder(pre, max(1, 15 // n)) for _ in range(n)]
    _KEEP.extend(decoders)  # see _KEEP
    for d in decoders:
        d.decode(batch(0), _no_pillow)
    times: list[float] = []

    def work(d: Any) -> None:
        for k in range(reps):
            started = time.perf_counter()
            d.decode(batch(k), _no_pillow)
            times.append(time.perf_counter() - started)
    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(d,)) for d in decoders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"ms_per_batch": round(1000 * sum(times) / len(times), 2),
            "images_per_s": round(n * reps * len(batch(0)) / wall)}


def _count(stop: threading.Event, got: list[int]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
    got.append(n)


def _gil_share(decode) -> float:
    """A Python counter's count beside decoding, over its count alone (1.0: decoding holds no GIL)."""
    counts = []
    for busy in (False, True):
        stop, got = threading.Event(), []
        thread = threading.Thread(target=_count, args=(stop, got))
        thread.start()
        started, k = time.perf_counter(), 0
        while time.perf_counter() - started < 1.5:
            if busy:
                decode(k)
                k += 1
            else:
                time.sleep(0.005)
        stop.set()
        thread.join()
        counts.append(got[0])
    return round(counts[1] / counts[0], 3)


def _backends(ort: Any, cp: Any, model: str, pre: Preprocessor, batch, tensor: Any) -> dict[str, Any]:
    """Each nvImageCodec backend on its own: images of a batch it decodes, ms alone, ms beside inference."""
    from nvidia import nvimgcodec

    run = _runner(_session(ort, cp, model, False)[0])
    _step("session")
    run(tensor)
    _step("inference on a decoded batch")
    found: dict[str, Any] = {}
    for kind in ("HW_GPU_ONLY", "HYBRID_CPU_GPU", "GPU_ONLY"):
        _step(kind)
        d = _decoder(pre, 15)
        _KEEP.append(d)
        _KEEP_RAW.append(d.decoder)  # freed in _close, not here (see _KEEP)
        try:
            d.decoder = nvimgcodec.Decoder(device_id=0, max_num_cpu_threads=15, options=":fancy_upsampling=1",
                                           backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))])
            d._reuse = None
            images = d._decode_jpegs([it.data for it in batch(0)])
            taken = sum(img is not None for img in images)
        except Exception as exc:  # a backend this machine lacks
            found[kind] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        row: dict[str, Any] = {"decoded_of_batch": taken}
        if taken == len(images):
            row["decode_ms"] = _ms_per_call(lambda k, d=d: d.decode(batch(k), _no_pillow), 2.0)
            row["beside_inference_ms"], row["infer_ms"] = _beside(
                lambda: run(tensor), lambda d=d: _ms_per_call(lambda k: d.decode(batch(k), _no_pillow), 2.0))
        found[kind] = row
    return found


def _pipelines(ort: Any, cp: Any, model: str, pre: Preprocessor, batch) -> dict[str, Any]:
    """D decoder threads -> a queue of device batches -> inference (one batch at a time, or two engines
    unlocked); images/s over a few seconds after a warm-up."""
    runs = [_runner(_session(ort, cp, model, False)[0]) for _ in range(2)]
    _step("two sessions")
    configs = [(1, 1, False, True), (2, 1, False, True), (3, 1, False, True), (4, 1, False, True),
               (3, 1, True, True), (4, 1, True, True), (4, 2, False, False)]
    found = {}
    for decoders, engines, priority, locked in configs:
        _step(f"pipeline {decoders} {engines} {priority} {locked}")
        name = f"decoders={decoders} engines={engines}{' priority' if priority else ''}{'' if locked else ' unlocked'}"
        found[name] = _pipeline(cp, pre, batch, decoders, runs[:engines], priority, locked)
        print(name, found[name], flush=True)
    return found


_KEEP: list[Any] = []
_KEEP_RAW: list[Any] = []
_STREAMS: list[Any] = []


class _Pipe:
    """The shared state of one pipeline run: a queue of device batches, the timings, the images counted."""

    def __init__(self, depth: int, locked: bool) -> None:
        import queue

        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.lock = threading.Lock() if locked else contextlib.nullcontext()
        self.decode_s: list[float] = []
        self.infer_s: list[float] = []
        self.images, self.counting = 0, False
        self._count = threading.Lock()  # two unlocked engines add to it at once

    def put(self, tensor: Any) -> None:
        import queue

        while not self.stop.is_set():
            try:
                self.ready.put(tensor, timeout=0.2)
                return
            except queue.Full:
                continue

    def decode_loop(self, decoder: Any, batch, k: int) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            tensor = decoder.decode(batch(k), _no_pillow).tensor
            self.decode_s.append(time.perf_counter() - started)
            k += 1
            self.put(tensor)

    def infer_loop(self, run: Any) -> None:
        import queue

        while not self.stop.is_set():
            try:
                tensor = self.ready.get(timeout=0.2)
            except queue.Empty:
                continue
            with self.lock:
                started = time.perf_counter()
                run(tensor)
                self.infer_s.append(time.perf_counter() - started)
            if self.counting:
                with self._count:
                    self.images += len(tensor)


def _pipeline(cp: Any, pre: Preprocessor, batch, n_decoders: int, runs: list, priority: bool, locked: bool,
              seconds: float = 5.0) -> dict[str, float]:
    decoders = [_decoder(pre, max(1, 15 // n_decoders)) for _ in range(n_decoders)]
    _KEEP.extend(decoders)  # freeing nvImageCodec decoders between runs crashed the probe (H200, 0.9.0)
    for d in decoders:
        if priority:  # the resize kernels ahead of inference's (nvImageCodec's own streams keep theirs)
            d.stream.synchronize()
            d.stream = cp.cuda.Stream(non_blocking=True, priority=-5)
        d.decode(batch(0), _no_pillow)
    pipe = _Pipe(n_decoders, locked)
    threads = [threading.Thread(target=pipe.decode_loop, args=(d, batch, n)) for n, d in enumerate(decoders)]
    threads += [threading.Thread(target=pipe.infer_loop, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    time.sleep(1.0)
    pipe.counting, started = True, time.perf_counter()
    time.sleep(seconds)
    images, elapsed = pipe.images, time.perf_counter() - started
    pipe.stop.set()
    for t in threads:
        t.join()
    return {"images_per_s": round(images / elapsed), "decode_ms": round(1000 * float(np.mean(pipe.decode_s)), 2),
            "infer_ms": round(1000 * float(np.mean(pipe.infer_s)), 2)}


if __name__ == "__main__":
    main()
