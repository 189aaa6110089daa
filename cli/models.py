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
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
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
    click.echo(f"preprocess {pre['color']} resize {list(pre['resize'])} crop {list(pre['crop'])} "
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


def _manifest_for(src: Path, name: str, manifest_file: str | None, quantized: bool, base: str | None,
                  overrides: dict[str, Any], fmt: str = "paddle") -> ModelManifest:
    path = Path(manifest_file) if manifest_file else src / MANIFEST_FILE
    data: dict[str, Any] = {}
    if path.is_file():
        from common.config import tomllib

        data = tomllib.loads(path.read_text())
    elif manifest_file:
        raise ModelError(f"manifest {manifest_file} does not exist")
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
    return ModelManifest.from_dict(data, str(path))


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(x) for x in text.split(",")]


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(x) for x in text.split(",") if x != ""]


@models.command()
@click.argument("src", type=click.Path(exists=True))
@click.option("--name", required=True, help="Name in the repository (quantized: NAME@TAG).")
@click.option("--manifest", "manifest_file", type=click.Path(dir_okay=False), help="A model.toml to use.")
@click.option("--quantized", is_flag=True, help="A PaddleSlim PTQ/QAT model: served in INT8.")
@click.option("--base", help="With --quantized: the FP32 model it was made from.")
@click.option("--input-name")
@click.option("--shape", help="C,H,W of the input (batch is dynamic).")
@click.option("--color", type=click.Choice(["L", "RGB", "BGR"]))
@click.option("--resize", help="H,W, or one int for the shorter side.")
@click.option("--crop", help="H,W centre crop.")
@click.option("--scale", type=float)
@click.option("--mean")
@click.option("--std")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False), help="One label per line.")
@click.option("--top-k", type=int)
@click.option("--raw", is_flag=True, help="Return raw outputs instead of top-k classes.")
@click.option("--max-batch-size", type=int)
@click.option("--force", is_flag=True, help="Replace an existing model of that name.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def add(ctx: Context, src: str, name: str, manifest_file: str | None, quantized: bool, base: str | None,
        input_name: str | None, shape: str | None, color: str | None, resize: str | None, crop: str | None,
        scale: float | None, mean: str | None, std: str | None, labels_file: str | None, top_k: int | None,
        raw: bool, max_batch_size: int | None, force: bool, as_json: bool) -> None:
    """Validate a model - a Paddle inference folder, or an ONNX file (served by the onnxruntime engine) -
    and add it to the repository."""
    from common.repo import staged_source
    from workers.engines.validate import validate

    labels = Path(labels_file).read_text().splitlines() if labels_file else None
    items = [("input", "name", input_name),
             ("input", "shape", [-1, *_ints(shape)] if shape else None),
             ("preprocess", "color", color), ("preprocess", "resize", _ints(resize)),
             ("preprocess", "crop", _ints(crop)), ("preprocess", "scale", scale),
             ("preprocess", "mean", _floats(mean)), ("preprocess", "std", _floats(std)),
             ("postprocess", "labels", [x for x in labels if x] if labels else None),
             ("postprocess", "top_k", top_k), ("postprocess", "kind", "raw" if raw else None)]
    with staged_source(Path(src)) as (folder, fmt):
        manifest_dir = Path(src) if Path(src).is_dir() else Path(src).parent
        manifest = _manifest_for(manifest_dir, name, manifest_file, quantized, base,
                                 {"items": items, "max_batch_size": max_batch_size}, fmt)
        report = validate(folder, manifest)
        dest = ctx.client.repo.install(folder, manifest, overwrite=force)
    out = {"model": name, "path": str(dest), **report}
    if as_json:
        echo_json(out)
    else:
        click.echo(f"added {name} at {dest} (inputs {report['inputs']}, outputs {report['outputs']})")


@models.command()
@click.argument("kind")
@click.option("--name", help="Name in the repository (default: KIND).")
@click.option("--force", is_flag=True, help="Rebuild if it exists.")
@click.option("--export-images", type=click.Path(file_okay=False), help="digits: write held-out PNGs + labels.csv.")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--json", "as_json", is_flag=True)
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
    click.echo(f"made {out['model']} in {ctx.client.repo.dir(str(out['model']))}")
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
