"""The local model repository: ``<TRTBATCH_MODEL_REPO>/<name>/`` holding ``inference.pdmodel``,
``inference.pdiparams`` and ``model.toml``.

Quantized versions live beside their base as ``<name>@int8-ptq`` (or any ``<name>@<tag>``) with
``quantized = true`` and ``base = "<name>"`` in their manifest. The repository is where users
author models; the fleet serves them from Redis (common/artifacts.py), published on submit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common.errors import ModelError
from common.manifest import MANIFEST_FILE, MODEL_FILE, PARAMS_FILE, ModelManifest

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
        """Copy a model's two program files beside a fresh manifest; atomic per model folder."""
        dest = self.dir(manifest.name)
        if dest.exists() and not overwrite:
            raise ModelError(f"model {manifest.name!r} already exists in {self.root} (use --force)")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.", dir=self.root))
        try:
            for fname in (MODEL_FILE, PARAMS_FILE):
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
