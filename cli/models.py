"""``trtbatch models list | show | add | make | remove``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.util import Context, echo_json, pass_ctx
from common.errors import ModelError
from common.manifest import MANIFEST_FILE, ModelManifest


@click.group()
def models() -> None:
    """Manage the model repository."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def list_models(ctx: Context, as_json: bool) -> None:
    """Models in the local repository and those published to Redis."""
    repo = ctx.client.repo
    rows: dict[str, dict[str, Any]] = {}
    for name in repo.names():
        m = repo.load(name)
        rows[name] = {"name": name, "local": True, "trained": m.trained, "quantized": m.quantized,
                      "max_batch_size": m.max_batch_size, "metrics": m.metrics, "published_versions": 0}
    for name in ctx.client.artifacts.model_names():
        row = rows.setdefault(name, {"name": name, "local": False})
        row["published_versions"] = len(ctx.client.artifacts.versions(name))
    out = [rows[k] for k in sorted(rows)]
    if as_json:
        echo_json(out)
        return
    if not out:
        click.echo(f"no models in {repo.root}; try `trtbatch models make digits`")
        return
    click.echo(f"{'NAME':<28} {'LOCAL':<6} {'TRAINED':<8} {'QUANT':<6} {'VERSIONS':>8}  ACCURACY")
    for r in out:
        acc = (r.get("metrics") or {}).get("held_out_accuracy", "")
        click.echo(f"{r['name']:<28} {'yes' if r['local'] else 'no':<6} {r.get('trained', '?')!s:<8} "
                   f"{r.get('quantized', '?')!s:<6} {r['published_versions']:>8}  {acc}")


@models.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def show(ctx: Context, name: str, as_json: bool) -> None:
    """Show a model: manifest, published versions (the current one marked), how each engine and precision
    is served (ONNX forms with their conversion checks, INT8 versions, TensorRT tables), quantization reports."""
    from producer.reports import describe, format_report

    info = describe(ctx.client, name)
    if as_json:
        echo_json(info)
        return

    m = info["manifest"]
    click.echo(f"model      {name}" + (f"  ({info['path']})" if "path" in info else "  (published only)"))
    click.echo(f"input      {m['input']['name']} {list(m['input']['shape'])} {m['input']['layout']}")
    pre = m["preprocess"]
    fit = pre.get("fit", "stretch")
    padding = "" if fit == "stretch" else f" fit {fit} pad {pre.get('pad_value', 0):g} {pre.get('pad_align')}"
    click.echo(f"preprocess {pre['color']} resize {list(pre['resize'])} crop {list(pre['crop'])}{padding} "
               f"scale {pre['scale']:.6g} mean {list(pre['mean'])} std {list(pre['std'])}")
    post = m["postprocess"]
    click.echo(f"postproc   {post['kind']} top-{post['top_k']} ({len(post['labels'])} labels)")
    click.echo(f"max batch  {m['max_batch_size']}   trained {m['trained']}   quantized {m['quantized']}")
    if m.get("metrics"):
        click.echo(f"metrics    {json.dumps(m['metrics'])}")
    if m.get("provenance"):
        click.echo(f"provenance {json.dumps(m['provenance'])}")
    for i, v in enumerate(info["versions"]):
        click.echo(f"version    {v['version_id']}" + ("  (current: new jobs use it)" if i == 0 else ""))
    for row in info["serving"]:
        click.echo(f"serves     {row['engine']:<12} {row['precision']:<5} {row['how']}")
    for report in info["quantization_reports"]:
        click.echo(format_report(report))


#: What a quantized model does not take over from its base's manifest: it is a model of its own.
_NOT_INHERITED = ("name", "metrics", "provenance", "description", "quantized", "base", "format")


def _manifest_data(src: Path, name: str, manifest_file: str | None, quantized: bool, base: str | None,
                   overrides: dict[str, Any], fmt: str = "paddle",
                   base_manifest: ModelManifest | None = None) -> tuple[dict[str, Any], str, list[str]]:
    """The manifest's dict from the folder's (or the given) model.toml - else, for a quantized model,
    its base's input, preprocessing and postprocessing - and the command line's options."""
    path = Path(manifest_file) if manifest_file else src / MANIFEST_FILE
    data, notes = _starting_data(path, manifest_file, base_manifest if quantized else None)
    data["name"] = name
    data["format"] = fmt
    if quantized:
        data["quantized"] = True
        data["base"] = base or data.get("base") or name.split("@", 1)[0]
    for section, key, value in overrides.get("items", []):
        if value is not None:
            data.setdefault(section, {})[key] = value
    for key in ("max_batch_size",):
        if overrides.get(key) is not None:
            data[key] = overrides[key]
    return data, str(path), notes


def _starting_data(path: Path, manifest_file: str | None, base_manifest: ModelManifest | None
                   ) -> tuple[dict[str, Any], list[str]]:
    from common.config import tomllib

    if path.is_file():
        return tomllib.loads(path.read_text()), []
    if manifest_file:
        raise ModelError(f"manifest {manifest_file} does not exist")
    if base_manifest is None:
        return {}, []
    data = {k: v for k, v in tomllib.loads(base_manifest.to_toml()).items() if k not in _NOT_INHERITED}
    data["input"].pop("name", None)  # the quantized program's own input name wins over the base's
    return data, [f"input, preprocessing and postprocessing from the base model {base_manifest.name!r}"]


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(x) for x in text.split(",")]


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(x) for x in text.split(",") if x != ""]


def _size_items(resize: str | None, crop: str | None) -> list[tuple[str, str, Any]]:
    """``--resize H,W`` alone means no crop: a crop kept from the defaults or a model.toml would
    otherwise cut a different size out of the exact resize."""
    sizes = _ints(resize)
    crops = _ints(crop)
    if sizes is not None and len(sizes) == 2 and crops is None:
        crops = []
    return [("preprocess", "resize", sizes), ("preprocess", "crop", crops)]


@models.command()
@click.argument("src", type=click.Path(exists=True))
@click.option("--name", required=True, help="Name in the repository (quantized: NAME@TAG).")
@click.option("--manifest", "manifest_file", type=click.Path(dir_okay=False), help="A model.toml to use.")
@click.option("--quantized", is_flag=True, help="A PaddleSlim PTQ/QAT model: served in INT8.")
@click.option("--base", help="With --quantized: the FP32 model it was made from.")
@click.option("--input-name", help="The program's input (default: the program's only input).")
@click.option("--shape", help="C,H,W of the input (batch is dynamic; default: the program's, which must be "
                              "given where the program leaves H or W dynamic, else the resize size or 224).")
@click.option("--color", type=click.Choice(["L", "RGB", "BGR"]), help="Channel order fed to the model.")
@click.option("--resize", help="H,W exact size (no crop unless --crop), or one int for the shorter side.")
@click.option("--crop", help="H,W centre crop after resizing.")
@click.option("--fit", type=click.Choice(["stretch", "pad", "height"]),
              help="stretch: resize to H,W (default); pad: keep the aspect ratio inside H,W and pad "
                   "(letterbox); height: scale to height H, width capped at W, pad right (PaddleOCR rec).")
@click.option("--pad-value", type=float, help="With --fit pad|height: the padding's 8-bit pixel value (0..255).")
@click.option("--pad-align", type=click.Choice(["topleft", "center"]),
              help="With --fit pad|height: where the scaled image sits (default topleft).")
@click.option("--scale", type=float, help="Multiply 8-bit pixels by this first (default 1/255).")
@click.option("--mean", help="Per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406 (one value: all).")
@click.option("--std", help="Per-channel std divided by after the mean, e.g. 0.229,0.224,0.225 (one value: all).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False), help="One label per line.")
@click.option("--top-k", type=click.IntRange(min=1), help="Labels per image in results (default 5).")
@click.option("--raw", is_flag=True, help="Return raw outputs instead of top-k classes.")
@click.option("--max-batch-size", type=click.IntRange(min=1), help="Largest batch a job may use with this model "
              "(default 64; TensorRT builds its engines up to it).")
@click.option("--force", is_flag=True, help="Replace an existing model of that name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def add(ctx: Context, src: str, name: str, manifest_file: str | None, quantized: bool, base: str | None,
        input_name: str | None, shape: str | None, color: str | None, resize: str | None, crop: str | None,
        fit: str | None, pad_value: float | None, pad_align: str | None, scale: float | None, mean: str | None,
        std: str | None, labels_file: str | None, top_k: int | None, raw: bool, max_batch_size: int | None,
        force: bool, as_json: bool) -> None:
    """Validate a model and add it to the repository. SRC is a folder or one model file: a Paddle
    inference model (<prefix>.pdmodel + .pdiparams, __model__ [+ __params__], model + params) or an
    ONNX file (served by the onnxruntime engine). What the options and a model.toml beside it leave
    out is taken from the program, with a note."""
    labels = Path(labels_file).read_text().splitlines() if labels_file else None
    items = [("input", "name", input_name),
             ("input", "shape", [-1, *_ints(shape)] if shape else None),
             ("preprocess", "color", color), *_size_items(resize, crop), ("preprocess", "fit", fit),
             ("preprocess", "pad_value", pad_value), ("preprocess", "pad_align", pad_align),
             ("preprocess", "scale", scale), ("preprocess", "mean", _floats(mean)), ("preprocess", "std", _floats(std)),
             ("postprocess", "labels", [x for x in labels if x] if labels else None),
             ("postprocess", "top_k", top_k), ("postprocess", "kind", "raw" if raw else None)]
    out = add_model(ctx, Path(src), name, manifest_file, quantized, base,
                    {"items": items, "max_batch_size": max_batch_size}, force)
    if as_json:
        echo_json(out)
        return
    for note in out["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"added {name} at {out['path']} (inputs {out['inputs']}, outputs {out['outputs']})")


def add_model(ctx: Context, src: Path, name: str, manifest_file: str | None, quantized: bool, base: str | None,
              overrides: dict[str, Any], force: bool) -> dict[str, Any]:
    """Find the model at ``src``, bring it to our layout, complete the manifest from the program,
    validate, install."""
    from common.intake import fill_defaults
    from common.repo import staged_source
    from workers.engines.model_info import model_info, resave_combined
    from workers.engines.validate import check_interface, validate

    repo = ctx.client.repo
    base_name = base or name.split("@", 1)[0]
    base_manifest = repo.load(base_name) if quantized and repo.exists(base_name) else None
    with staged_source(src, resave=resave_combined) as (folder, fmt):
        info = model_info(folder, fmt)
        check_interface(info)
        manifest_dir = src if src.is_dir() else src.parent
        data, source, notes = _manifest_data(manifest_dir, name, manifest_file, quantized, base, overrides, fmt,
                                             base_manifest)
        notes += fill_defaults(data, info.inputs[0].name, info.inputs[0].shape, info.output_names,
                               info.softmax_outputs)
        manifest = ModelManifest.from_dict(data, source)
        report = validate(folder, manifest, info)
        dest = repo.install(folder, manifest, overwrite=force)
    return {"model": name, "path": str(dest), "notes": notes, **report}


@models.command()
@click.argument("kind")
@click.option("--name", help="Name in the repository (default: KIND).")
@click.option("--force", is_flag=True, help="Rebuild if it exists.")
@click.option("--export-images", type=click.Path(file_okay=False),
              help="digits: write held-out PNGs + labels.csv (only those, when the model exists).")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True,
              help="Training epochs (digits only).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def make(ctx: Context, kind: str, name: str | None, force: bool, export_images: str | None, epochs: int,
         as_json: bool) -> None:
    """Make a model with Paddle: `digits` (trained) or a paddle.vision architecture (random weights)."""
    from tools import modelmake

    if kind == "digits":
        out = modelmake.make_digits(ctx.client.repo, name or "digits", force,
                                    Path(export_images) if export_images else None, epochs)
    elif kind in modelmake.VISION_ARCHS:
        out = modelmake.make_vision(ctx.client.repo, kind, name, force)
    else:
        raise ModelError(f"unknown kind {kind!r}; choose digits or one of {', '.join(modelmake.VISION_ARCHS)}")
    if as_json:
        echo_json(out)
        return
    where = ctx.client.repo.dir(str(out["model"]))
    click.echo(f"{out['model']} exists in {where}; not retrained (--force to rebuild)" if out.get("exported_only")
               else f"made {out['model']} in {where}")
    if "held_out_accuracy" in out:
        click.echo(f"held-out accuracy {out['held_out_accuracy']:.4f} ({out['seconds']:.1f}s)")
    if "labels_csv" in out:
        click.echo(f"held-out images and labels: {out['labels_csv']}")


@models.command()
@click.argument("name")
@pass_ctx
def remove(ctx: Context, name: str) -> None:
    """Remove a model from the local repository (published versions stay in Redis)."""
    ctx.client.repo.remove(name)
    click.echo(f"removed {name}")


def register(group: click.Group) -> None:
    group.add_command(models)
