#!/usr/bin/env python3
"""GPU decode vs the Pillow path, on a GPU worker's own code: same files, same model, both paths.

For every batch of the given images it runs what a GPU worker runs (``GpuDecoder.decode``: nvImageCodec
+ the resample kernels, Pillow for what the router sends there) and what a CPU worker runs
(``Preprocessor`` on each file), then compares

* the preprocessed tensors, image by image: mean and max absolute difference in 8-bit pixel units
  (the normalised difference times std / scale), and the share of values that differ at all;
* the model's top-1 through the same ONNX Runtime GPU predictor (``run_device`` on the GPU tensor,
  ``run`` on the Pillow batch): agreement, and accuracy against ``labels.csv`` when the folder has one;
* which path each image took (and why the others went to Pillow).

    python3 bench/gpu_decode_check.py --model digits --images DIR [--batch-size 128] [--output check.json]

Needs a GPU, onnxruntime-gpu, nvidia-nvimgcodec-cu13 and CuPy; the model must have an ONNX form
(``models add x.onnx`` or ``trtbatch convert``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import emit_json_line
from common import catalog
from common.config import Settings
from common.imaging import Preprocessor
from common.schemas import PayloadItem
from common.spec import build_spec
from producer.client import Client


def _predictor(client: Client, model: str, batch_size: int, device_id: int) -> tuple[Any, Any]:
    from workers import engines
    from workers.engines.probe import detect

    resolved = catalog.resolve(client.artifacts, model, "fp32", "gpu", engine="onnxruntime")
    vid = catalog.engine_artifact(client.artifacts, resolved.version_id, resolved.manifest, "onnxruntime", "fp32")
    manifest = client.artifacts.manifest(vid)
    model_dir = client.artifacts.materialize(vid, client.settings.cache_dir)
    spec = build_spec(manifest, vid, detect(gpu=True), "gpu", "gpu", "fp32", batch_size, None,  # type: ignore[arg-type]
                      engine="onnxruntime", gpu_id=device_id)
    opt = client.settings.cache_dir / "engines" / spec.engine_cache_name()
    return engines.build(spec, model_dir, opt), manifest


def _labels(folder: Path) -> dict[str, str]:
    table = folder / "labels.csv"
    if not table.is_file():
        return {}
    with table.open() as fh:
        return {Path(row["path"]).name: row["label"] for row in csv.DictReader(fh)}


def _pixel_units(pre: Preprocessor) -> np.ndarray:
    """Per channel: one unit of the normalised tensor in 8-bit pixel steps (std / scale)."""
    std = np.asarray(pre.pre.std, np.float64)
    return (std if std.size == pre.chw[0] else np.repeat(std, pre.chw[0])) / pre.pre.scale


class Tally:
    """Running comparison of the two paths over a folder."""

    def __init__(self, units: np.ndarray, class_labels: list[str], truth: dict[str, str]) -> None:
        self.units, self.class_labels, self.truth = units, class_labels, truth
        self.means: list[np.ndarray] = []
        self.maxes: list[np.ndarray] = []
        self.differing = self.values = self.agree = self.n = self.on_gpu = 0
        self.correct = {"gpu": 0, "pillow": 0}
        self.routed: dict[str, int] = {}

    def add(self, names: list[str], dev: np.ndarray, host: np.ndarray, top_gpu: np.ndarray, top_cpu: np.ndarray
            ) -> None:
        diff = np.abs(dev.astype(np.float64) - host) * self.units
        self.means.append(diff.mean(axis=(1, 2, 3)))
        self.maxes.append(diff.max(axis=(1, 2, 3)))
        self.differing += int((diff > 1e-3).sum())
        self.values += diff.size
        self.agree += int((top_gpu == top_cpu).sum())
        self.n += len(names)
        for name, g, c in zip(names, top_gpu, top_cpu, strict=True):
            want = self.truth.get(name)
            if want is not None:
                self.correct["gpu"] += int(self._label(g) == want)
                self.correct["pillow"] += int(self._label(c) == want)

    def _label(self, index: int) -> str:
        return self.class_labels[index] if index < len(self.class_labels) else str(index)

    def summary(self, images: int) -> dict[str, Any]:
        mean, worst = np.concatenate(self.means), np.concatenate(self.maxes)
        out: dict[str, Any] = {
            "images": images, "compared": self.n, "decoded_on_gpu": self.on_gpu, "sent_to_pillow": self.routed,
            "pixel_diff_mean": round(float(mean.mean()), 5), "pixel_diff_max": round(float(worst.max()), 4),
            "images_identical": int((worst < 1e-3).sum()),
            "values_differing_fraction": round(self.differing / self.values, 6),
            "top1_agreement": round(self.agree / self.n, 6) if self.n else None}
        if self.truth:
            out.update(accuracy_gpu=round(self.correct["gpu"] / self.n, 6),
                       accuracy_pillow=round(self.correct["pillow"] / self.n, 6))
        return out


def compare(files: list[Path], pre: Preprocessor, predictor: Any, batch_size: int, device_id: int,
            tally: Tally, jpeg_backend: str) -> dict[str, Any]:
    from workers.pipeline.gpu_decode import GpuDecoder

    gpu = GpuDecoder(pre, device_id, backend=jpeg_backend)  # as the workers decode (gpu_jpeg_backend)
    try:
        _compare_batches(files, pre, predictor, batch_size, gpu, tally)
    finally:
        gpu.close()  # freed here, as a worker does; left to the garbage collector it crashed (H200)
    return tally.summary(len(files))


def _compare_batches(files: list[Path], pre: Preprocessor, predictor: Any, batch_size: int, gpu: Any,
                     tally: Tally) -> None:
    from workers.pipeline.decode import decode_all

    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        items = [PayloadItem(index=i, path=str(p), data=p.read_bytes()) for i, p in enumerate(chunk)]
        out = gpu.decode(items, lambda sub: decode_all(None, 1, pre, sub, pre.chw))  # type: ignore[arg-type]
        host, decoded = decode_all(None, 1, pre, items, pre.chw)  # type: ignore[arg-type]
        good = [i for i in out.good if not isinstance(decoded[i], Exception)]
        rows = [out.good.index(i) for i in good]
        top_gpu = _top1(predictor.run_device(out.tensor))[rows]
        tally.add([chunk[i].name for i in good], out.tensor.get()[rows], host[good], top_gpu,
                  _top1(predictor.run(host[good])))
        tally.on_gpu += out.on_gpu
        for reason, count in out.routed.items():
            tally.routed[reason] = tally.routed.get(reason, 0) + count


def _top1(outputs: dict[str, np.ndarray]) -> np.ndarray:
    scores = next(iter(outputs.values()))
    return scores.reshape(scores.shape[0], -1).argmax(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    import onnxruntime

    onnxruntime.preload_dlls()
    client = Client(Settings.from_env())
    predictor, manifest = _predictor(client, args.model, args.batch_size, args.device)
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, client.settings.max_image_pixels)
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    tally = Tally(_pixel_units(pre)[None, :, None, None], list(manifest.postprocess.labels), _labels(args.images))
    result = {"model": args.model, "folder": str(args.images), "batch_size": args.batch_size,
              **compare(files, pre, predictor, args.batch_size, args.device, tally, client.settings.gpu_jpeg_backend)}
    emit_json_line(result, args.output)


if __name__ == "__main__":
    main()
