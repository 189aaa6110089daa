"""The local model repository: ``<TRTBATCH_MODEL_REPO>/<name>/`` holding ``inference.pdmodel``,
``inference.pdiparams`` and ``model.toml``.

Quantized versions live beside their base as ``<name>@int8-ptq`` (or any ``<name>@<tag>``) with
``quantized = true`` and ``base = "<name>"`` in their manifest. The repository is where users
author models; the fleet serves them from Redis (common/artifacts.py), published on submit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import ModelError
from common.manifest import MANIFEST_FILE, MODEL_FILE, ONNX_FILE, ModelManifest

PTQ_TAG = "int8-ptq"


def quantized_name(base: str, tag: str = PTQ_TAG) -> str:
    return f"{base}@{tag}"


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST_FILE).is_file())

    def dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ModelError(f"bad model name {name!r}")
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.dir(name) / MANIFEST_FILE).is_file()

    def load(self, name: str) -> ModelManifest:
        if not self.exists(name):
            known = ", ".join(self.names()) or "none"
            raise ModelError(f"unknown model {name!r} in {self.root} (known: {known}); "
                             f"create one with `trtbatch models make digits` or `trtbatch models add`")
        return ModelManifest.load(self.dir(name))

    def quantized_for(self, base: str) -> str | None:
        """The name of a quantized version of ``base`` in this repository, if any."""
        for name in self.names():
            if name.startswith(f"{base}@"):
                manifest = ModelManifest.load(self.dir(name))
                if manifest.quantized and manifest.base == base:
                    return name
        return None

    def install(self, src: Path, manifest: ModelManifest, overwrite: bool = False) -> Path:
        """Copy a model's files (the Paddle program and parameters, or the ONNX file) beside a fresh
        manifest; atomic per model folder."""
        dest = self.dir(manifest.name)
        if dest.exists() and not overwrite:
            raise ModelError(f"model {manifest.name!r} already exists in {self.root} (use --force)")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.", dir=self.root))
        try:
            for fname in manifest.model_files:
                shutil.copyfile(src / fname, tmp / fname)
            manifest.save(tmp)
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def remove(self, name: str) -> None:
        if not self.exists(name):
            raise ModelError(f"unknown model {name!r}")
        shutil.rmtree(self.dir(name))


@contextlib.contextmanager
def staged_source(src: Path) -> Iterator[tuple[Path, str]]:
    """A model a user points at, as (folder holding the model under our file names, format): an ONNX
    file (``model.onnx`` or any ``*.onnx``) or a folder with one, or a Paddle inference folder."""
    src = Path(src)
    onnx_file = src if src.is_file() and src.suffix.lower() == ".onnx" else None
    if src.is_dir() and not (src / MODEL_FILE).exists():
        found = sorted(src.glob("*.onnx"))
        onnx_file = (src / ONNX_FILE) if (src / ONNX_FILE).exists() else (found[0] if len(found) == 1 else None)
    if onnx_file is None:
        if not src.is_dir():
            raise ModelError(f"{src} is neither a Paddle inference folder nor an .onnx file")
        yield src, "paddle"
        return
    with tempfile.TemporaryDirectory(prefix="trtbatch-onnx-") as tmp:
        staged = Path(tmp) / ONNX_FILE
        try:
            os.link(onnx_file, staged)
        except OSError:
            shutil.copyfile(onnx_file, staged)
        yield Path(tmp), "onnx"
