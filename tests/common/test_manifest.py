"""model.toml: TOML round trips and every validation error, each with a message that says what is wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from common.errors import ModelError
from common.manifest import MANIFEST_FILE, InputSpec, ModelManifest, Postprocess, Preprocess

DIGITS = ModelManifest(
    name="digits", max_batch_size=64,
    input=InputSpec(name="x", shape=(-1, 1, 32, 32)),
    preprocess=Preprocess(color="L", resize=(32, 32), crop=(), scale=1 / 255, mean=(0.5,), std=(0.5,)),
    postprocess=Postprocess(kind="classify", top_k=5, labels=tuple(str(i) for i in range(10))),
    metrics={"held_out_accuracy": 0.981, "per_class": {"0": 1.0}}, provenance={"made_by": "unit test"},
    description="handwritten digits",
)
QUANTIZED = ModelManifest(name="digits@int8-ptq", quantized=True, base="digits", input=DIGITS.input,
                          preprocess=DIGITS.preprocess, postprocess=DIGITS.postprocess)
TEXT_LINES = ModelManifest(name="rec", input=InputSpec(name="x", shape=(-1, 3, 48, 320)),
                           preprocess=Preprocess(color="BGR", resize=(48, 320), crop=(), mean=(0.5,), std=(0.5,),
                                                 fit="height", pad_value=127.5, pad_align="topleft"),
                           postprocess=Postprocess(kind="raw", softmax=False))
LETTERBOX = dataclasses.replace(TEXT_LINES, name="det", preprocess=dataclasses.replace(
    TEXT_LINES.preprocess, color="RGB", fit="pad", pad_value=114, pad_align="center"))
RESNET = ModelManifest(name="resnet50")  # the defaults: RGB 224 after a 256 shorter-side resize
RAW = ModelManifest(name="embedder", input=InputSpec(name="image", shape=(-1, 3, 112, 96)),
                    preprocess=Preprocess(color="BGR", resize=(128,), crop=(112, 96), mean=(0.0,), std=(1.0,),
                                          interpolation="bicubic"),
                    postprocess=Postprocess(kind="raw", softmax=False, output="feat"), max_batch_size=4096)


@pytest.mark.parametrize("manifest", [DIGITS, QUANTIZED, RESNET, RAW, TEXT_LINES, LETTERBOX], ids=lambda m: m.name)
def test_toml_round_trip(manifest: ModelManifest, tmp_path: Path) -> None:
    manifest.validate()
    text = manifest.to_toml()
    assert f'name = "{manifest.name}"' in text
    assert ModelManifest.from_toml(text) == manifest
    path = manifest.save(tmp_path)
    assert path == tmp_path / MANIFEST_FILE
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_FILE]  # no temporary left behind
    assert ModelManifest.load(tmp_path) == manifest


def test_documented_example_parses() -> None:
    text = """
name = "digits"
max_batch_size = 64
trained = true
[input]
name = "x"
layout = "NCHW"
shape = [-1, 1, 32, 32]
[preprocess]
color = "L"
resize = [32, 32]
crop = []
scale = 0.00392156862745098
mean = [0.5]
std = [0.5]
[postprocess]
kind = "classify"
softmax = true
top_k = 5
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
"""
    m = ModelManifest.from_toml(text)
    assert m.input.chw == (1, 32, 32) and m.input.batch_shape(8) == (8, 1, 32, 32)
    assert m.preprocess.resize == (32, 32) and m.postprocess.labels[3] == "3"
    assert m.postprocess.label(3) == "3" and m.postprocess.label(12) == "12"
    assert m.with_updates(max_batch_size=8).max_batch_size == 8


def test_padding_fields_are_written_only_when_padding() -> None:
    """A manifest that does not pad reads as before the fields existed (older workers refuse unknown keys)."""
    assert "fit" not in DIGITS.to_toml() and "pad_" not in DIGITS.to_toml()
    text = TEXT_LINES.to_toml()
    assert 'fit = "height"' in text and "pad_value = 127.5" in text and 'pad_align = "topleft"' in text
    parsed = ModelManifest.from_toml('name = "m"\n[input]\nshape = [-1, 3, 640, 640]\n[preprocess]\n'
                                     'resize = [640, 640]\ncrop = []\nfit = "pad"\npad_value = 114\n'
                                     'pad_align = "center"\n')
    assert (parsed.preprocess.fit, parsed.preprocess.pad_value, parsed.preprocess.pad_align) == ("pad", 114, "center")
    assert ModelManifest.from_toml(DIGITS.to_toml()).preprocess.fit == "stretch"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"has no model\.toml"):
        ModelManifest.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("name = 'x'\n[input\n")
    with pytest.raises(ModelError, match="not valid TOML") as info:
        ModelManifest.load(tmp_path)
    assert str(tmp_path / MANIFEST_FILE) in str(info.value)


@pytest.mark.parametrize("text", [
    'name = "m"\ncolour = "RGB"\n',  # unknown top-level key
    'name = "m"\n[input]\nsize = [1, 2]\n',  # unknown key in a table
    '[input]\nname = "x"\n',  # no name
])
def test_unknown_or_missing_keys(text: str) -> None:
    with pytest.raises(ModelError, match=r"model\.toml"):
        ModelManifest.from_toml(text)


def test_from_toml_validates() -> None:
    with pytest.raises(ModelError, match="only NCHW"):
        ModelManifest.from_toml('name = "m"\n[input]\nlayout = "NHWC"\n')


def _with(section: str | None = None, **changes: Any) -> ModelManifest:
    if section is None:
        return dataclasses.replace(RESNET, **changes)
    return dataclasses.replace(RESNET, **{section: dataclasses.replace(getattr(RESNET, section), **changes)})


INVALID = {
    "layout": (_with("input", layout="NHWC"), "input.layout 'NHWC' is not supported (only NCHW)"),
    "static batch": (_with("input", shape=(8, 3, 224, 224)), "dynamic batch"),
    "rank": (_with("input", shape=(-1, 224, 224)), "must be [-1, C, H, W]"),
    "zero dim": (_with("input", shape=(-1, 3, 0, 224)), "fixed positive C, H, W"),
    "dynamic dim": (_with("input", shape=(-1, 3, -1, 224)), "fixed positive C, H, W"),
    "dtype": (_with("input", dtype="float16"), "only float32"),
    "color/channels": (_with("preprocess", color="L"), "preprocess.color L gives 1 channel(s), the input has 3"),
    "unknown color": (_with("preprocess", color="YUV"), "preprocess.color must be one of"),
    "mean length": (_with("preprocess", mean=(0.1, 0.2)), "preprocess.mean needs 1 or 3 values"),
    "std length": (_with("preprocess", std=(0.1, 0.2, 0.3, 0.4)), "preprocess.std needs 1 or 3 values"),
    "std zero": (_with("preprocess", std=(0.2, 0.0, 0.2)), "preprocess.std must not contain 0"),
    "resize size": (_with("preprocess", resize=(200, 200), crop=()),
                    "preprocess gives [200, 200] images, the input wants [224, 224]"),
    "crop size": (_with("preprocess", crop=(220, 224)), "preprocess gives [220, 224] images, the input wants"),
    "short side no crop": (_with("preprocess", resize=(224,), crop=()), "shorter-side resize needs a crop"),
    "resize arity": (_with("preprocess", resize=(1, 2, 3)), "preprocess.resize must be one positive int"),
    "resize zero": (_with("preprocess", resize=(0,)), "preprocess.resize must be one positive int"),
    "interpolation": (_with("preprocess", interpolation="cubic"), "interpolation 'cubic' is not supported"),
    "fit": (_with("preprocess", fit="letterbox", resize=(224, 224), crop=()),
            "preprocess.fit must be one of ('stretch', 'pad', 'height'), got 'letterbox'"),
    "pad align": (_with("preprocess", fit="pad", resize=(224, 224), crop=(), pad_align="middle"),
                  "preprocess.pad_align must be one of ('topleft', 'center')"),
    "pad value": (_with("preprocess", fit="pad", resize=(224, 224), crop=(), pad_value=256),
                  "preprocess.pad_value must be an 8-bit pixel value within 0..255, got 256"),
    "pad value type": (_with("preprocess", fit="pad", resize=(224, 224), crop=(), pad_value="grey"),
                       "preprocess.pad_value must be an 8-bit pixel value"),
    "pad with crop": (_with("preprocess", fit="pad", resize=(224, 224), crop=(224, 224)),
                      "preprocess.fit = 'pad' pads to the resize size; remove preprocess.crop"),
    "pad size": (_with("preprocess", fit="height", resize=(256,), crop=()),
                 "preprocess.fit = 'height' needs resize = [h, w] of the input, [224, 224]; got [256]"),
    "postprocess kind": (_with("postprocess", kind="detect"), "postprocess.kind must be one of ('classify', 'raw')"),
    "top_k": (_with("postprocess", top_k=0), "postprocess.top_k must be >= 1"),
    "batch 0": (_with(max_batch_size=0), "max_batch_size must be within 1..4096"),
    "batch 4097": (_with(max_batch_size=4097), "max_batch_size must be within 1..4096"),
    "empty name": (_with(name=""), "bad model name ''"),
    "slash name": (_with(name="a/b"), "bad model name 'a/b'"),
    "dot name": (_with(name=".hidden"), "bad model name '.hidden'"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_validation_errors(case: str) -> None:
    manifest, message = INVALID[case]
    with pytest.raises(ModelError) as info:
        manifest.validate()
    assert message in str(info.value)


@pytest.mark.parametrize("case", ["layout", "std zero", "short side no crop", "postprocess kind", "slash name",
                                  "fit", "pad with crop"])
def test_validation_errors_through_toml(case: str) -> None:
    manifest, message = INVALID[case]
    with pytest.raises(ModelError) as info:
        ModelManifest.from_toml(manifest.to_toml())
    assert message in str(info.value)
