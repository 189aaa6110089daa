"""What ``trtbatch models add`` fills into a manifest from the model itself.

A user's ``model.toml`` and command-line options come first; what they leave out is taken from the
program (the input's name and C/H/W, whether an output already ends in a softmax) or follows from
what they gave, and every guess is reported as a note so the user sees it and can override it:

* the input's name and fixed C/H/W are the program's; a dynamic H or W (``[None, 3, None, None]``)
  is fixed by the preprocessing's size when it gives one, else 224;
* with no size options, an input of 224 x 224 keeps the ImageNet default (shorter side 256, centre
  crop 224), another square input S x S gets the same proportions (shorter side round(S / 0.875),
  crop S), and a non-square one is stretched to H x W - cropping would cut text lines or wide
  images;
* an exact ``resize = [h, w]`` with no ``crop`` means no crop, and a shorter-side resize with no
  ``crop`` crops to the input's H x W;
* ``fit = pad | height`` resizes to the input's [h, w] and never crops;
* a one-channel input reads grey (``L``) images, normalised with the means of ImageNet's values;
* a classifier whose output already ends in a softmax gets ``softmax = false``: scores are
  probabilities exactly once.

Pure functions on the manifest's dict (before ``ModelManifest.from_dict``), tested without Paddle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_SIDE = 224
CROP_RATIO = 0.875  # ImageNet's 224 / 256
GREY_MEAN, GREY_STD = 0.449, 0.226  # the means of ImageNet's RGB mean and std


def fill_defaults(data: dict[str, Any], input_name: str, input_shape: Sequence[int], output_names: Sequence[str],
                  softmax_outputs: frozenset[str] | set[str]) -> list[str]:
    """Complete ``data`` in place from the program's interface; returns the notes to show."""
    notes: list[str] = []
    inp = data.setdefault("input", {})
    pre = data.setdefault("preprocess", {})
    inp.setdefault("name", input_name)
    if "shape" not in inp:
        inp["shape"] = _shape(input_shape, pre, notes)
    channels, height, width = (int(d) for d in inp["shape"][1:4]) if len(inp["shape"]) == 4 else (3, 0, 0)
    if channels == 1:
        _grey(pre, notes)
    if height > 0 and width > 0:
        _sizes(pre, height, width, notes)
    _softmax(data.setdefault("postprocess", {}), output_names, softmax_outputs, notes)
    return notes


def final_size(pre: dict[str, Any]) -> tuple[int, int] | None:
    """The H x W the preprocessing gives, when its options fix one."""
    crop, resize = list(pre.get("crop") or []), list(pre.get("resize") or [])
    if len(crop) == 2:
        return crop[0], crop[1]
    if len(resize) == 2:  # with no crop: an exact resize means no crop
        return resize[0], resize[1]
    return None


def _shape(program: Sequence[int], pre: dict[str, Any], notes: list[str]) -> list[int]:
    dims = [int(d) for d in program]
    if len(dims) != 4:
        return [-1, *dims[1:]]  # validation refuses it with the program's real shape
    channels = dims[1] if dims[1] > 0 else (1 if pre.get("color") == "L" else 3)
    height, width = dims[2], dims[3]
    if height <= 0 or width <= 0:
        size = final_size(pre) or (DEFAULT_SIDE, DEFAULT_SIDE)
        height, width = (height if height > 0 else size[0]), (width if width > 0 else size[1])
        notes.append(f"the program's input has a dynamic size {dims[1:]}; the manifest fixes it at "
                     f"{channels}x{height}x{width} (--shape C,H,W to choose)")
    return [-1, channels, height, width]


def _grey(pre: dict[str, Any], notes: list[str]) -> None:
    if "color" not in pre:
        pre["color"] = "L"
        notes.append("one input channel: images are read as grey (L) (--color to change)")
    if "mean" not in pre and "std" not in pre:
        pre["mean"], pre["std"] = [GREY_MEAN], [GREY_STD]
        notes.append(f"grey normalisation mean {GREY_MEAN} std {GREY_STD} (--mean/--std to change)")


def _sizes(pre: dict[str, Any], height: int, width: int, notes: list[str]) -> None:
    resize = list(pre.get("resize") or [])
    if pre.get("fit", "stretch") != "stretch":
        pre.setdefault("resize", [height, width])
        pre.setdefault("crop", [])
        return
    if not resize and "crop" not in pre:
        if (height, width) == (DEFAULT_SIDE, DEFAULT_SIDE):
            return
        if height == width:
            pre["resize"], pre["crop"] = [round(height / CROP_RATIO)], [height, width]
        else:
            pre["resize"], pre["crop"] = [height, width], []
        crop = f" crop {pre['crop']}" if pre["crop"] else ", no crop"
        notes.append(f"preprocess: resize {pre['resize']}{crop} for the {height}x{width} input "
                     "(--resize/--crop to change)")
    elif len(resize) == 2:
        pre.setdefault("crop", [])
    elif len(resize) == 1:
        pre.setdefault("crop", [height, width])


def _softmax(post: dict[str, Any], output_names: Sequence[str], softmaxed: frozenset[str] | set[str],
             notes: list[str]) -> None:
    if post.get("kind", "classify") != "classify" or not output_names:
        return
    output = post.get("output") or output_names[0]
    if output in softmaxed and post.get("softmax", True):
        post["softmax"] = False
        notes.append(f"output {output!r} already ends in a softmax: postprocess.softmax = false, "
                     "scores are its probabilities")
