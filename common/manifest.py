"""The ``model.toml`` manifest that sits beside ``inference.pdmodel`` / ``inference.pdiparams``.

Example (the digits model)::

    name = "digits"
    max_batch_size = 64
    trained = true
    [input]
    name = "x"
    layout = "NCHW"
    shape = [-1, 1, 32, 32]      # -1: dynamic batch
    [preprocess]
    color = "L"                  # L | RGB | BGR
    resize = [32, 32]            # [h, w]: exact size; a single int: shorter side
    crop = []                    # optional [h, w] centre crop after resizing
    fit = "stretch"              # stretch | pad | height (below)
    pad_value = 0.0              # fit = pad | height: the 8-bit pixel value of the padding
    pad_align = "topleft"        # fit = pad | height: topleft | center
    scale = 0.00392156862745098  # multiply 8-bit pixels first
    mean = [0.5]
    std = [0.5]
    [postprocess]
    kind = "classify"            # classify (softmax + top-k) | raw (outputs as lists)
    softmax = true
    top_k = 5
    labels = ["0", "1", ...]

``fit`` says how an image becomes the input's H x W:

* ``stretch`` (default): ``resize = [h, w]`` scales each side to exactly that size; ``resize = [s]``
  scales the shorter side to ``s`` keeping the aspect ratio and ``crop`` cuts the centre out.
* ``pad``: the whole image is scaled by one factor to fit inside ``resize = [h, w]`` (each side
  rounded to nearest, at least 1 px) and the rest is padding - detection letterboxing
  (``pad_align = "center"``).
* ``height``: the image is scaled to height ``h`` and width ``ceil(h * width / height)``, capped at
  ``w`` (a wider image is squeezed to ``w``), then padded on the right - PaddleOCR's text-line
  recognition (``RecResizeImg``; with ``pad_value = 127.5``, ``scale = 1/255``, ``mean = std = 0.5``
  the padding is 0 after normalisation, as PaddleOCR pads).

With ``pad`` and ``height``, ``resize`` is ``[h, w]`` and ``crop`` stays empty. ``pad_value`` is in
8-bit pixel units (0..255, fractions allowed) and is normalised like the pixels (``pad_value * scale
- mean) / std``); ``pad_align`` places the scaled image at the top-left or in the centre (the odd
pixel of padding going right / below).

``color = "BGR"`` feeds channels blue, green, red (OpenCV-trained models); ``mean`` and ``std`` are
listed in the model's channel order.

``quantized = true`` marks a model whose program already carries quantize/dequantize ops
(offline quantization or QAT output); such a model is served in INT8 with
``use_calib_mode=False`` on TensorRT and ``enable_mkldnn_int8()`` on CPU.

``format = "onnx"`` marks an ONNX model (``model.onnx`` beside the manifest instead of the two
Paddle files): a user's own, or the ONNX form of a Paddle version made by a conversion job
(``<name>.onnx``, ``<name>.onnx-fp16``), which names its source in ``provenance.source_version``.
Only the onnxruntime engine serves ONNX models.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from common.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST_FILE = "model.toml"
MODEL_FILE = "inference.pdmodel"
PARAMS_FILE = "inference.pdiparams"
ONNX_FILE = "model.onnx"
FORMATS = {"paddle": (MODEL_FILE, PARAMS_FILE), "onnx": (ONNX_FILE,)}
COLORS = {"L": 1, "RGB": 3, "BGR": 3}
FITS = ("stretch", "pad", "height")
PAD_ALIGNS = ("topleft", "center")
POSTPROCESS_KINDS = ("classify", "raw")
MAX_BATCH_LIMIT = 4096


@dataclass(frozen=True)
class InputSpec:
    name: str = "x"
    layout: str = "NCHW"
    shape: tuple[int, ...] = (-1, 3, 224, 224)
    dtype: str = "float32"

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.shape[1], self.shape[2], self.shape[3])

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape[1:])


@dataclass(frozen=True)
class Preprocess:
    color: str = "RGB"
    resize: tuple[int, ...] = (256,)
    crop: tuple[int, ...] = (224, 224)
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    fit: str = "stretch"
    pad_value: float = 0.0
    pad_align: str = "topleft"


@dataclass(frozen=True)
class Postprocess:
    kind: str = "classify"
    softmax: bool = True
    top_k: int = 5
    labels: tuple[str, ...] = ()
    output: str = ""

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)


@dataclass(frozen=True)
class ModelManifest:
    name: str
    input: InputSpec = field(default_factory=InputSpec)
    preprocess: Preprocess = field(default_factory=Preprocess)
    postprocess: Postprocess = field(default_factory=Postprocess)
    max_batch_size: int = 64
    trained: bool = True
    quantized: bool = False
    format: str = "paddle"
    base: str = ""
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def model_files(self) -> tuple[str, ...]:
        """The files of the model itself, beside the manifest."""
        return FORMATS[self.format]

    def validate(self) -> ModelManifest:
        if self.format not in FORMATS:
            raise ModelError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        _check_input(self.input)
        _check_preprocess(self.preprocess, self.input)
        if self.postprocess.kind not in POSTPROCESS_KINDS:
            raise ModelError(f"postprocess.kind must be one of {POSTPROCESS_KINDS}")
        if self.postprocess.top_k < 1:
            raise ModelError("postprocess.top_k must be >= 1")
        if not 1 <= self.max_batch_size <= MAX_BATCH_LIMIT:
            raise ModelError(f"max_batch_size must be within 1..{MAX_BATCH_LIMIT}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ModelError(f"bad model name {self.name!r}")
        return self

    def to_toml(self) -> str:
        data = asdict(self)
        data["input"]["shape"] = list(self.input.shape)
        # Padding fields at their defaults stay out of the file: a manifest that does not pad reads
        # the same as before they existed, to workers of older releases too (unknown keys are errors).
        if self.preprocess.fit == "stretch":
            for key in ("fit", "pad_value", "pad_align"):
                data["preprocess"].pop(key)
        return tomli_w.dumps(_drop_empty(data))

    def with_updates(self, **changes: Any) -> ModelManifest:
        return replace(self, **changes)

    @classmethod
    def from_toml(cls, text: str, source: str = MANIFEST_FILE) -> ModelManifest:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ModelError(f"{source}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_FILE) -> ModelManifest:
        try:
            inp = InputSpec(**_tuples(data.pop("input", {})))
            pre = Preprocess(**_tuples(data.pop("preprocess", {})))
            post = Postprocess(**_tuples(data.pop("postprocess", {})))
            return cls(input=inp, preprocess=pre, postprocess=post, **data).validate()
        except TypeError as exc:
            raise ModelError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        path = model_dir / MANIFEST_FILE
        if not path.is_file():
            raise ModelError(f"{model_dir} has no {MANIFEST_FILE}")
        return cls.from_toml(path.read_text(), str(path))

    def save(self, model_dir: Path) -> Path:
        path = model_dir / MANIFEST_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_toml())
        tmp.replace(path)
        return path


def _tuples(section: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def _drop_empty(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_empty(v) for k, v in data.items() if v is not None and v != "" and v != {}}
    if isinstance(data, tuple):
        return list(data)
    return data


def _check_input(inp: InputSpec) -> None:
    if inp.layout != "NCHW":
        raise ModelError(f"input.layout {inp.layout!r} is not supported (only NCHW)")
    if len(inp.shape) != 4 or inp.shape[0] != -1:
        raise ModelError(f"input.shape must be [-1, C, H, W] (dynamic batch), got {list(inp.shape)}")
    if any(int(d) <= 0 for d in inp.shape[1:]):
        raise ModelError(f"input.shape must have fixed positive C, H, W, got {list(inp.shape)}")
    if inp.dtype != "float32":
        raise ModelError(f"input.dtype {inp.dtype!r} is not supported (only float32)")


def _check_preprocess(pre: Preprocess, inp: InputSpec) -> None:
    _check_color(pre, inp.chw[0])
    _check_size(pre, inp.chw[1:])
    if pre.interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
        raise ModelError(f"preprocess.interpolation {pre.interpolation!r} is not supported")


def _check_color(pre: Preprocess, channels: int) -> None:
    if pre.color not in COLORS:
        raise ModelError(f"preprocess.color must be one of {sorted(COLORS)}")
    if COLORS[pre.color] != channels:
        raise ModelError(f"preprocess.color {pre.color} gives {COLORS[pre.color]} channel(s), "
                         f"the input has {channels}")
    for name in ("mean", "std"):
        values = getattr(pre, name)
        if len(values) not in (1, channels):
            raise ModelError(f"preprocess.{name} needs 1 or {channels} values")
    if any(s == 0 for s in pre.std):
        raise ModelError("preprocess.std must not contain 0")


def _check_size(pre: Preprocess, hw: tuple[int, int]) -> None:
    if len(pre.resize) not in (1, 2) or any(int(r) <= 0 for r in pre.resize):
        raise ModelError("preprocess.resize must be one positive int (shorter side) or [h, w]")
    if pre.fit != "stretch":
        _check_pad(pre, hw)
        return
    final = tuple(pre.crop) if pre.crop else (tuple(pre.resize) if len(pre.resize) == 2 else None)
    if final is None:
        raise ModelError("preprocess: a shorter-side resize needs a crop to fix the size")
    if final != tuple(hw):
        raise ModelError(f"preprocess gives {list(final)} images, the input wants {list(hw)}")


def _check_pad(pre: Preprocess, hw: tuple[int, int]) -> None:
    if pre.fit not in FITS:
        raise ModelError(f"preprocess.fit must be one of {FITS}, got {pre.fit!r}")
    if pre.pad_align not in PAD_ALIGNS:
        raise ModelError(f"preprocess.pad_align must be one of {PAD_ALIGNS}, got {pre.pad_align!r}")
    if isinstance(pre.pad_value, bool) or not isinstance(pre.pad_value, int | float) or not 0 <= pre.pad_value <= 255:
        raise ModelError(f"preprocess.pad_value must be an 8-bit pixel value within 0..255, got {pre.pad_value}")
    if pre.crop:
        raise ModelError(f"preprocess.fit = {pre.fit!r} pads to the resize size; remove preprocess.crop")
    if tuple(pre.resize) != tuple(hw):
        raise ModelError(f"preprocess.fit = {pre.fit!r} needs resize = [h, w] of the input, {list(hw)}; "
                         f"got {list(pre.resize)}")
