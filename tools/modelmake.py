"""Make models with Paddle itself - nothing is downloaded.

* ``digits``: a small CNN trained on scikit-learn's bundled digits. Every sample is rendered as an
  8x8 8-bit grayscale PNG (pixel = round(value * 255 / 16)) and decoded by the very
  ``Preprocessor`` the workers use, so serving sees exactly what training saw. 30 % is held out;
  the held-out accuracy goes into the manifest, and ``export_images`` writes those PNGs with a
  ``labels.csv`` for end-to-end checks (without retraining when the model exists already).
* ``resnet50``, ``mobilenet_v2``, ...: ``paddle.vision`` architectures with random weights
  (ImageNet preprocessing, 224x224), marked untrained - for throughput work only.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import ModelError
from common.imaging import Preprocessor
from common.manifest import InputSpec, ModelManifest, Postprocess, Preprocess
from common.repo import ModelRepository
from workers.engines.paddle_import import paddle as load_paddle

DIGITS_SIZE = 32
DIGITS_LABELS = tuple(str(i) for i in range(10))
VISION_ARCHS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
HELD_OUT_FRACTION = 0.3


@dataclass
class DigitsData:
    train_png: list[bytes]
    train_y: np.ndarray
    test_png: list[bytes]
    test_y: np.ndarray


def digits_manifest(name: str = "digits") -> ModelManifest:
    return ModelManifest(
        name=name, description="CNN trained on scikit-learn's digits (8x8 PNGs upsampled to 32x32)",
        input=InputSpec(name="x", shape=(-1, 1, DIGITS_SIZE, DIGITS_SIZE)),
        preprocess=Preprocess(color="L", resize=(DIGITS_SIZE, DIGITS_SIZE), crop=(), scale=1 / 255,
                              mean=(0.5,), std=(0.5,)),
        postprocess=Postprocess(kind="classify", softmax=True, top_k=3, labels=DIGITS_LABELS),
        max_batch_size=128, trained=True)


def render_png(sample: np.ndarray) -> bytes:
    pixels = np.round(sample * 255.0 / 16.0).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def digits_data(seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pngs = [render_png(img) for img in digits.images]
    idx = np.arange(len(pngs))
    train_i, test_i = train_test_split(idx, test_size=HELD_OUT_FRACTION, random_state=seed,
                                       stratify=digits.target)
    return DigitsData([pngs[i] for i in train_i], digits.target[train_i].astype(np.int64),
                      [pngs[i] for i in test_i], digits.target[test_i].astype(np.int64))


def preprocess_all(manifest: ModelManifest, pngs: list[bytes]) -> np.ndarray:
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, max_pixels=1 << 30)
    return np.stack([pre(p).array for p in pngs])


def _digits_net():
    nn = load_paddle().nn

    return nn.Sequential(
        nn.Conv2D(1, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(16, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(32, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(), nn.MaxPool2D(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))


def train_digits(data: DigitsData, manifest: ModelManifest, epochs: int = 12, seed: int = 0):
    """Train; returns (model, held-out accuracy). ~10-20 s on 2 cores."""
    paddle = load_paddle()

    paddle.set_device("cpu")  # a tiny CNN: the CPU is enough, and keeps CUDA out of this process
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    x_train = preprocess_all(manifest, data.train_png)
    x_test = preprocess_all(manifest, data.test_png)
    model = _digits_net()
    sched = paddle.optimizer.lr.CosineAnnealingDecay(2e-3, T_max=epochs * (len(x_train) // 32 + 1))
    opt = paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())
    loss_fn = paddle.nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            loss = loss_fn(model(paddle.to_tensor(x_train[idx])), paddle.to_tensor(data.train_y[idx]))
            loss.backward()
            opt.step()
            opt.clear_grad()
            sched.step()
    model.eval()
    with paddle.no_grad():
        logits = model(paddle.to_tensor(x_test)).numpy()
    return model, float((logits.argmax(1) == data.test_y).mean())


def export(model, manifest: ModelManifest, dest: Path) -> None:
    paddle = load_paddle()
    model.eval()
    spec = paddle.static.InputSpec([None, *manifest.input.shape[1:]], "float32", name=manifest.input.name)
    paddle.jit.save(model, str(dest / "inference"), input_spec=[spec])


def export_images(data: DigitsData, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (png, label) in enumerate(zip(data.test_png, data.test_y, strict=True)):
        name = f"digit_{i:04d}.png"
        (out_dir / name).write_bytes(png)
        rows.append((name, str(int(label))))
    with open(out_dir / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return out_dir / "labels.csv"


def make_digits(repo: ModelRepository, name: str = "digits", force: bool = False,
                export_dir: Path | None = None, epochs: int = 12) -> dict[str, object]:
    """Train and install the digits model; with ``export_dir`` also write its held-out images. When
    the model exists already (and not ``force``), only the images are written: the split is seeded,
    so they are the held-out images of the model in the repository."""
    if repo.exists(name) and not force:
        if export_dir is None:
            raise ModelError(f"model {name!r} already exists (use --force to rebuild)")
        return {"model": name, "exported_only": True, "labels_csv": str(export_images(digits_data(), export_dir))}
    started = time.perf_counter()
    manifest = digits_manifest(name)
    data = digits_data()
    model, acc = train_digits(data, manifest, epochs=epochs)
    manifest = manifest.with_updates(metrics={
        "held_out_accuracy": round(acc, 6), "held_out_images": len(data.test_y),
        "train_images": len(data.train_y), "epochs": epochs})
    with tempfile.TemporaryDirectory() as tmp:
        export(model, manifest, Path(tmp))
        repo.install(Path(tmp), manifest, overwrite=force)
    out: dict[str, object] = {"model": name, "held_out_accuracy": acc, "seconds": time.perf_counter() - started}
    if export_dir is not None:
        out["labels_csv"] = str(export_images(data, export_dir))
    return out


def vision_manifest(arch: str, name: str) -> ModelManifest:
    return ModelManifest(
        name=name, description=f"paddle.vision {arch}, random weights (throughput work only)",
        input=InputSpec(name="x", shape=(-1, 3, 224, 224)), preprocess=Preprocess(),
        postprocess=Postprocess(kind="classify", top_k=5), max_batch_size=256, trained=False)


def make_vision(repo: ModelRepository, arch: str, name: str | None = None, force: bool = False,
                seed: int = 0) -> dict[str, object]:
    paddle = load_paddle()
    if arch not in VISION_ARCHS:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(VISION_ARCHS)}")
    name = name or arch
    if repo.exists(name) and not force:
        raise ModelError(f"model {name!r} already exists (use --force to rebuild)")
    paddle.set_device("cpu")  # exporting needs no GPU, and keeps CUDA out of this process
    paddle.seed(seed)
    model = getattr(paddle.vision.models, arch)(pretrained=False)
    manifest = vision_manifest(arch, name)
    with tempfile.TemporaryDirectory() as tmp:
        export(model, manifest, Path(tmp))
        repo.install(Path(tmp), manifest, overwrite=force)
    return {"model": name, "architecture": arch, "trained": False}
