"""Where a GPU worker's JPEG decoding spends its time (docs/gpu-verification.md, "Where the time goes").

One process, on a GPU with nvImageCodec, CuPy and onnxruntime-gpu; prints one JSON line:

* ``decode_ms``: ``GpuDecoder.decode`` of a batch alone (nvImageCodec + the resize kernels);
* ``decoders_at_once``: N decoders, each in its own thread, decoding at the same time (ms per batch, img/s);
* ``infer_ms``: the ONNX model alone on a device batch (IO binding), on ONNX Runtime's default streams
  and on a stream of its own (``gpu_engine_stream = own``);
* ``beside_inference``: decode while another thread runs inference back to back, per stream mode,
  with the part inside nvImageCodec, and inference's own time meanwhile;
* ``beside_matmul_ms``: decode beside a CuPy matmul loop (GPU work that is not ONNX Runtime);
* ``gil_share``: what a pure-Python counter thread gets while decoding runs, against alone.

    python3 bench/gpu_decode_probe.py --images DIR_OF_JPEGS --model resnet50.onnx [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.imaging import Preprocessor
from common.manifest import Preprocess
from common.schemas import PayloadItem


def _no_pillow(items: list[PayloadItem]) -> Any:
    raise RuntimeError(f"{len(items)} images went the Pillow path; the probe wants GPU-decodable JPEGs")


def _ms_per_call(fn, seconds: float = 2.5) -> float:
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn(n)
        n += 1
    return round(1000 * (time.perf_counter() - started) / n, 2)


def _session(ort: Any, cp: Any, model: str, own_stream: bool) -> tuple[Any, Any]:
    opts: dict[str, str] = {"device_id": "0"}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--model", required=True, help="An ONNX classifier taking [N, 3, 224, 224] float32.")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    import cupy as cp
    import onnxruntime as ort

    from workers.pipeline.gpu_decode import GpuDecoder

    ort.preload_dlls()
    files = sorted(args.images.glob("*.jpg"))[:4 * args.batch_size]
    items = [PayloadItem(i, str(p), p.read_bytes()) for i, p in enumerate(files)]
    pre = Preprocessor(Preprocess(), (3, 224, 224), 10**8)
    size = args.batch_size

    def batch(k: int) -> list[PayloadItem]:
        return items[(k % 4) * size:(k % 4 + 1) * size]
    decoder = GpuDecoder(pre, 0, 15)
    tensor = decoder.decode(batch(0), _no_pillow).tensor
    out: dict[str, Any] = {"probe": "gpu_decode", "images": len(items), "batch_size": size,
                           "decode_ms": _ms_per_call(lambda k: decoder.decode(batch(k), _no_pillow))}
    out["decoders_at_once"] = {str(n): _at_once(pre, batch, n) for n in (1, 2, 4)}
    out["infer_ms"], out["beside_inference"] = {}, {}
    for mode in ("default", "own"):
        out["infer_ms"][mode], out["beside_inference"][mode] = _engine_mode(ort, cp, args.model, mode, decoder,
                                                                             batch, tensor)
    a, stream = cp.random.random((4096, 4096), cp.float32), cp.cuda.Stream(non_blocking=True)

    def matmul() -> None:
        with stream:
            a @ a
            stream.synchronize()
    out["beside_matmul_ms"] = _beside(matmul, lambda: _ms_per_call(lambda k: decoder.decode(batch(k), _no_pillow)))[0]
    out["gil_share"] = _gil_share(lambda k: decoder.decode(batch(k), _no_pillow))
    print(json.dumps(out))


def _engine_mode(ort: Any, cp: Any, model: str, mode: str, decoder: Any, batch, tensor: Any
                 ) -> tuple[float, dict[str, float]]:
    """Inference alone, then decoding beside it (and how much of that is inside nvImageCodec)."""
    run = _runner(_session(ort, cp, model, mode == "own")[0])
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
    from workers.pipeline.gpu_decode import GpuDecoder

    decoders = [GpuDecoder(pre, 0, max(1, 15 // n)) for _ in range(n)]
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


if __name__ == "__main__":
    main()
