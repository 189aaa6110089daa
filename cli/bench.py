"""``trtbatch bench``, ``bench-precision``, ``bench-load``: the benchmarks of bench/."""

from __future__ import annotations

import click

from cli.util import Context, pass_ctx


@click.command()
@click.option("-m", "--model", default="resnet50", show_default=True,
              help="Repository model (made with `models make` if missing: digits or a paddle.vision arch).")
@click.option("-p", "--precision", type=click.Choice(["fp32", "int8", "bf16", "fp16"]), default="fp32",
              show_default=True, help="Precision the model runs in (int8: its quantized version is made if missing).")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per batch, for the bare predictor, our pipeline and the peer alike.")
@click.option("-d", "--device", default="cpu", show_default=True, help="cpu or gpu:N")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Predictor threads (CPU).")
@click.option("--decode-threads", type=click.IntRange(min=0), default=0, help="Worker decode threads (0: auto).")
@click.option("--slots", type=click.IntRange(min=1), default=2, show_default=True,
              help="Pipeline slots of the benchmark worker (worker setting pipeline_slots).")
@click.option("--overlap-decode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Decode the next batch while one runs (worker setting overlap_decode).")
@click.option("--slot-pool", type=click.Choice(["auto", "threads", "processes"]), default="auto", show_default=True,
              help="Slots as threads of one worker process or as pool processes (worker setting slot_pool).")
@click.option("--engine-stream", type=click.Choice(["default", "own"]), default="default", show_default=True,
              help="GPU: ONNX Runtime on its default streams or on a stream of each predictor's own "
                   "(worker setting gpu_engine_stream).")
@click.option("--gpu-decoders", type=click.IntRange(min=1), default=2, show_default=True,
              help="GPU decode with thread slots: the decoders the worker process keeps for its slots (worker "
                   "setting gpu_decoders).")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batches the worker holds per slot (worker setting prefetch_multiplier).")
@click.option("--gil-switch-interval-ms", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Thread slots: the worker's GIL switch interval (worker setting "
                                      "gil_switch_interval_ms).")
@click.option("--jpeg-backend", type=click.Choice(["hybrid", "hardware"]), default="hybrid", show_default=True,
              help="GPU decode: nvImageCodec's hybrid CPU/GPU decoder or the GPU's JPEG engine first (worker "
                   "setting gpu_jpeg_backend).")
@click.option("-n", "--images", type=click.IntRange(min=16), default=960, show_default=True,
              help="End-to-end images (a long job shows the steady rate, not start-up).")
@click.option("--naive-images", type=click.IntRange(min=0), default=160, show_default=True,
              help="Images of the naive baseline (0: skip it).")
@click.option("--image-size", default="auto", show_default=True,
              help="JPEG sizes: N (NxN), WxH, or a mix W1xH1,W2xH2 used in turn; auto: 500x375 (a typical photo) on "
                   "GPUs, 256 on CPUs.")
@click.option("-e", "--engine", type=click.Choice(["paddle", "onnxruntime"]), default="paddle", show_default=True,
              help="Which engine serves the job (onnxruntime: the model's ONNX forms are made first).")
@click.option("--gpu-decode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="GPU workers: decode JPEGs on the GPU (worker setting gpu_decode).")
@click.option("--peer", type=click.Choice(["none", "ray"]), default="none", show_default=True,
              help="Also run a peer system on the same files, model, engine and batch size (ray: Ray Data).")
@click.option("--peer-images", type=click.IntRange(min=0), default=0,
              help="Images of the peer's run, the first of the same files (0: as many as ours).")
@click.option("--bare-seconds", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="How long to time the bare predictor (after warm-up).")
@click.option("--timeline", type=click.Path(dir_okay=False), default="",
              help="Also append every batch's step times (s since the job was created) and slot to this file.")
@click.option("--py-spy", "py_spy", type=click.Path(dir_okay=False), default="",
              help="Also record the worker's stacks that hold the GIL during the end-to-end run (py-spy, raw "
                   "format; with process slots, each pool process's own GIL).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also append the JSON line to this file.")
@pass_ctx
def bench(ctx: Context, model: str, precision: str, batch_size: int, device: str, threads: int,
          decode_threads: int, slots: int, overlap_decode: str, slot_pool: str, engine_stream: str,
          gpu_decoders: int, prefetch_multiplier: int, gil_switch_interval_ms: float, jpeg_backend: str, images: int,
          naive_images: int,
          image_size: str, engine: str, gpu_decode: str, peer: str, peer_images: int, bare_seconds: float,
          timeline: str, py_spy: str, output: str | None) -> None:
    """Measure bare predictor, end-to-end and naive-baseline images/s in one run; print one JSON line."""
    from bench.env import BenchOptions
    from bench.support import emit_json_line, parse_sizes
    from bench.throughput import run

    if image_size != "auto":
        try:
            parse_sizes(image_size)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--image-size") from exc
    if py_spy:
        import shutil

        if shutil.which("py-spy") is None:
            raise click.BadParameter("py-spy is not on PATH (pip install py-spy)", param_hint="--py-spy")

    opts = BenchOptions(model=model, precision=precision, batch_size=batch_size, device=device, threads=threads,
                        decode_threads=decode_threads, slots=slots, overlap_decode=overlap_decode, images=images,
                        naive_images=naive_images, image_size=image_size, bare_seconds=bare_seconds, engine=engine,
                        gpu_decode=gpu_decode, peer=peer, peer_images=peer_images, slot_pool=slot_pool,
                        engine_stream=engine_stream, gpu_decoders=gpu_decoders, prefetch_multiplier=prefetch_multiplier,
                        gil_switch_interval_ms=gil_switch_interval_ms,
                        timeline=timeline, py_spy=py_spy, gpu_jpeg_backend=jpeg_backend)
    emit_json_line(run(opts, ctx.settings), output)


@click.command("bench-precision")
@click.option("-m", "--model", "models", multiple=True, default=("resnet50", "mobilenet_v2"), show_default=True,
              help="Models to compare (repeat the option); made with `models make` if missing.")
@click.option("-p", "--precision", "precisions", multiple=True, default=None,
              help="Default: fp32, int8, and bf16 when this CPU has AVX512-BF16/AMX.")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per batch.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Predictor threads (CPU).")
@click.option("-n", "--images", type=click.IntRange(min=16), default=960, show_default=True,
              help="End-to-end images (a long job shows the steady rate, not start-up).")
@click.option("--bare-seconds", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="How long to time the bare predictor (after warm-up).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also append the JSON line to this file.")
@pass_ctx
def bench_precision(ctx: Context, models: tuple[str, ...], precisions: tuple[str, ...], batch_size: int, threads: int,
                    images: int, bare_seconds: float, output: str | None) -> None:
    """FP32 vs INT8 vs bf16 on CPU (bare and end to end) plus digits accuracy; one JSON line."""
    from bench.env import BenchOptions
    from bench.precision import run
    from bench.support import emit_json_line
    from workers.engines.probe import cpu_bf16

    chosen = list(precisions) or (["fp32", "int8", "bf16"] if cpu_bf16() else ["fp32", "int8"])
    opts = BenchOptions(batch_size=batch_size, threads=threads, images=images, bare_seconds=bare_seconds)
    emit_json_line(run(list(models), chosen, opts, ctx.settings), output)


@click.command("bench-load")
@click.option("-n", "--images", "sizes", multiple=True, type=click.IntRange(min=64), default=(10000, 100000),
              show_default=True, help="Job sizes (repeatable).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Predictor threads (CPU).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also append the JSON line to this file.")
@pass_ctx
def bench_load(ctx: Context, sizes: tuple[int, ...], threads: int, output: str | None) -> None:
    """Small-image jobs of several sizes: wall time and peak memory of producer, worker, Redis."""
    from bench.env import BenchOptions
    from bench.load import run
    from bench.support import emit_json_line

    emit_json_line(run(sorted(sizes), BenchOptions(threads=threads), ctx.settings), output)


def register(group: click.Group) -> None:
    group.add_command(bench)
    group.add_command(bench_precision)
    group.add_command(bench_load)
