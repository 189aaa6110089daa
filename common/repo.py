"""The local model repository: ``<TRTBATCH_MODEL_REPO>/<name>/`` holding ``inference.pdmodel``,
``inference.pdiparams`` and ``model.toml``.

Quantized versions live beside their base as ``<name>@int8-ptq`` (or any ``<name>@<tag>``) with
``quantized = true`` and ``base = "<name>"`` in their manifest. The repository is where users
author models; the fleet serves them from Redis (common/artifacts.py), published on submit.

``trtbatch models add`` accepts the layouts models come in (``find_model``): ``<prefix>.pdmodel`` +
``<prefix>.pdiparams`` under any prefix (paddle.jit.save, paddle.static.save_inference_model),
``__model__`` + ``__params__`` and ``model`` + ``params`` (Paddle 1.x, PaddleSlim, older exports),
``__model__`` with one file per parameter, and ONNX files; ``staged_source`` presents each under
our two file names, so everything downstream sees one layout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import ModelError
from common.manifest import FORMATS, MANIFEST_FILE, MODEL_FILE, ONNX_FILE, PARAMS_FILE, ModelManifest

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


@dataclass(frozen=True)
class ModelSource:
    """The model a user points at: its folder, format, and the file names it uses there."""

    folder: Path
    fmt: str  # paddle | onnx
    model_file: str
    params_file: str | None = None  # None: one file per parameter (Paddle 1.x, no params_filename)

    @property
    def ours(self) -> bool:
        """Already under our file names: nothing to rename or convert."""
        wanted = FORMATS[self.fmt]
        return (self.model_file, self.params_file or "") == (wanted[0], wanted[1] if len(wanted) > 1 else "")


#: Combined layouts besides ``<prefix>.pdmodel`` + ``<prefix>.pdiparams``: (program, parameters).
LEGACY_PAIRS = (("__model__", "__params__"), ("model", "params"))
PIR_SUFFIX = ".json"  # Paddle 3's PIR programs (inference.json), which Paddle 2.6 cannot read


def _candidates(folder: Path) -> list[ModelSource]:
    found: list[ModelSource] = []
    for program in sorted(folder.glob("*.pdmodel")):
        params = program.with_suffix(".pdiparams")
        if not params.is_file():
            raise ModelError(f"{program} has no {params.name} beside it; copy the parameters file next to it")
        found.append(ModelSource(folder, "paddle", program.name, params.name))
    for program, params in LEGACY_PAIRS:
        if (folder / program).is_file() and (folder / params).is_file():
            found.append(ModelSource(folder, "paddle", program, params))
        elif program == "__model__" and (folder / program).is_file():
            found.append(ModelSource(folder, "paddle", program, None))
    found += [ModelSource(folder, "onnx", p.name) for p in sorted(folder.glob("*.onnx")) if p.is_file()]
    return found


def _legacy_file(src: Path) -> ModelSource | None:
    """``__model__`` / ``__params__`` / ``model`` / ``params`` named on the command line."""
    folder = src.parent
    for program, params in LEGACY_PAIRS:
        if src.name in (program, params):
            if not (folder / program).is_file():
                raise ModelError(f"{src} has no {program} program beside it")
            return ModelSource(folder, "paddle", program, params if (folder / params).is_file() else None)
    return None


def _from_file(src: Path) -> ModelSource:
    folder, name = src.parent, src.name
    if src.suffix.lower() == ".onnx":
        return ModelSource(folder, "onnx", name)
    if src.suffix in (".pdmodel", ".pdiparams"):
        picked = [c for c in _candidates(folder) if c.model_file == src.with_suffix(".pdmodel").name]
        if picked:
            return picked[0]
        raise ModelError(f"{src} has no {src.with_suffix('.pdmodel').name} beside it")
    legacy = _legacy_file(src)
    if legacy is not None:
        return legacy
    if src.suffix == PIR_SUFFIX:
        raise ModelError(_PIR_MESSAGE.format(src))
    raise ModelError(f"{src} is not a model file; point at a folder, a .pdmodel, __model__ or an .onnx file")


_PIR_MESSAGE = ("{} is a Paddle 3 PIR program, which Paddle 2.6 cannot load; export it with Paddle 2.x, "
                "or with FLAGS_enable_pir_api=0, as a .pdmodel")


def _nothing_found(folder: Path) -> ModelError:
    if any(folder.glob(f"*{PIR_SUFFIX}")) and any(folder.glob("*.pdiparams")):
        return ModelError(_PIR_MESSAGE.format(next(folder.glob(f"*{PIR_SUFFIX}"))))
    orphan = next(iter(sorted(folder.glob("*.pdiparams"))), None)
    if orphan is not None:
        return ModelError(f"{folder} has {orphan.name} but no {orphan.with_suffix('.pdmodel').name} program")
    inner = sorted(p for p in folder.iterdir() if p.is_dir() and _has_model(p))
    if inner:
        return ModelError(f"no model in {folder} itself, but {inner[0]} has one: point at that folder")
    return ModelError(f"no model in {folder}: expected <name>.pdmodel + <name>.pdiparams, __model__ [+ __params__], "
                      "model + params, or an .onnx file")


def _has_model(folder: Path) -> bool:
    try:
        return bool(_candidates(folder))
    except ModelError:
        return True  # a model with a problem is still where the user meant to point


def find_model(src: Path) -> ModelSource:
    """The one model at ``src`` (a folder or one of its files); refuses a folder with none or several."""
    src = Path(src)
    if src.is_file():
        return _from_file(src)
    if not src.is_dir():
        raise ModelError(f"{src} does not exist")
    found = _candidates(src)
    if not found:
        raise _nothing_found(src)
    if len(found) > 1:
        names = ", ".join(c.model_file for c in found)
        raise ModelError(f"{src} holds {len(found)} models ({names}); point at one file, "
                         f"e.g. `trtbatch models add {src / found[0].model_file} --name ...`")
    return found[0]


Resave = Callable[[Path, str, Path], None]


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


@contextlib.contextmanager
def staged_source(src: Path, resave: Resave | None = None) -> Iterator[tuple[Path, str]]:
    """The model a user points at (``find_model``), as (folder holding it under our file names,
    format). Files under other names are linked under ours - the bytes, and so the version hashes,
    stay the same. A program with one file per parameter is loaded and saved combined by
    ``resave(folder, program file name, destination)`` (workers/engines/model_info.resave_combined)."""
    source = find_model(Path(src))
    if source.ours:
        yield source.folder, source.fmt
        return
    with tempfile.TemporaryDirectory(prefix="trtbatch-add-") as tmp:
        dest = Path(tmp)
        if source.fmt == "onnx":
            _link(source.folder / source.model_file, dest / ONNX_FILE)
        elif source.params_file is None:
            if resave is None:
                raise ModelError(f"{source.folder} has one file per parameter; converting it needs Paddle")
            resave(source.folder, source.model_file, dest)
        else:
            _link(source.folder / source.model_file, dest / MODEL_FILE)
            _link(source.folder / source.params_file, dest / PARAMS_FILE)
        yield dest, source.fmt
