"""What ``models add`` fills into a manifest from the program, and that the result validates."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import ModelError
from common.intake import fill_defaults
from common.manifest import ModelManifest

OUT = ["probs"]


def filled(data: dict[str, Any], shape: tuple[int, ...] = (-1, 3, 224, 224), softmaxed: frozenset[str] = frozenset(),
           name: str = "x") -> tuple[ModelManifest, list[str]]:
    data = {"name": "m", **data}
    notes = fill_defaults(data, name, shape, OUT, softmaxed)
    return ModelManifest.from_dict(data), notes


def test_imagenet_input_keeps_the_imagenet_defaults() -> None:
    manifest, notes = filled({}, name="image")
    assert manifest.input.name == "image" and manifest.input.shape == (-1, 3, 224, 224)
    assert (manifest.preprocess.resize, manifest.preprocess.crop) == ((256,), (224, 224))
    assert notes == []


def test_other_square_input_gets_the_same_proportions() -> None:
    manifest, notes = filled({}, shape=(-1, 3, 32, 32))
    assert (manifest.preprocess.resize, manifest.preprocess.crop) == ((37,), (32, 32))
    assert notes == ["preprocess: resize [37] crop [32, 32] for the 32x32 input (--resize/--crop to change)"]


def test_non_square_input_is_stretched_not_cropped() -> None:
    manifest, _ = filled({}, shape=(-1, 3, 48, 320))
    assert (manifest.preprocess.resize, manifest.preprocess.crop) == ((48, 320), ())


def test_exact_resize_alone_means_no_crop() -> None:
    """Before: the default centre crop stayed, and validation said 'preprocess gives [224, 224] images'."""
    manifest, notes = filled({"input": {"shape": [-1, 3, 48, 192]}, "preprocess": {"resize": [48, 192]}},
                             shape=(-1, 3, -1, -1))
    assert (manifest.preprocess.resize, manifest.preprocess.crop) == ((48, 192), ())
    assert notes == []


def test_shorter_side_resize_alone_crops_to_the_input() -> None:
    manifest, _ = filled({"preprocess": {"resize": [160]}}, shape=(-1, 3, 128, 128))
    assert manifest.preprocess.crop == (128, 128)


def test_dynamic_size_is_fixed_by_the_preprocessing_or_224() -> None:
    manifest, notes = filled({"preprocess": {"resize": [64, 96]}}, shape=(-1, 3, -1, -1))
    assert manifest.input.shape == (-1, 3, 64, 96)
    assert "dynamic size [3, -1, -1]; the manifest fixes it at 3x64x96" in notes[0]
    manifest, notes = filled({}, shape=(-1, 3, -1, -1))
    assert manifest.input.shape == (-1, 3, 224, 224) and "3x224x224" in notes[0]
    manifest, _ = filled({}, shape=(-1, 3, 48, -1))  # only the width is dynamic
    assert manifest.input.shape == (-1, 3, 48, 224)


def test_padding_fits_resize_to_the_input_and_never_crop() -> None:
    manifest, _ = filled({"preprocess": {"fit": "height", "pad_value": 127.5}}, shape=(-1, 3, 48, 320))
    assert (manifest.preprocess.resize, manifest.preprocess.crop, manifest.preprocess.fit) == ((48, 320), (), "height")


def test_one_channel_reads_grey() -> None:
    manifest, notes = filled({}, shape=(-1, 1, 28, 28))
    assert manifest.preprocess.color == "L" and manifest.preprocess.mean == (0.449,)
    assert len(notes) == 3
    manifest, notes = filled({"preprocess": {"mean": [0.5], "std": [0.5]}}, shape=(-1, 1, 28, 28))
    assert manifest.preprocess.mean == (0.5,) and not any("normalisation" in n for n in notes)


def test_an_output_that_ends_in_softmax_is_not_softmaxed_again() -> None:
    manifest, notes = filled({}, softmaxed=frozenset(OUT))
    assert manifest.postprocess.softmax is False
    assert notes == ["output 'probs' already ends in a softmax: postprocess.softmax = false, scores are its "
                     "probabilities"]
    manifest, notes = filled({"postprocess": {"softmax": True}}, softmaxed=frozenset(OUT))  # even when asked
    assert manifest.postprocess.softmax is False
    manifest, notes = filled({})
    assert manifest.postprocess.softmax is True and notes == []
    manifest, notes = filled({"postprocess": {"kind": "raw"}}, softmaxed=frozenset(OUT))
    assert notes == []


def test_what_the_user_gave_wins_and_is_validated() -> None:
    manifest, _ = filled({"input": {"name": "img", "shape": [-1, 3, 64, 64]}, "preprocess": {"resize": [64, 64]}},
                         shape=(-1, 3, 32, 32))
    assert manifest.input.name == "img" and manifest.input.shape == (-1, 3, 64, 64)  # validation compares later
    with pytest.raises(ModelError, match=r"preprocess gives \[60, 60\] images, the input wants \[64, 64\]"):
        filled({"preprocess": {"resize": [64], "crop": [60, 60]}}, shape=(-1, 3, 64, 64))
