"""Predictor specs: the pure decision of *how* to build a Paddle Inference predictor.

``build_spec`` turns (model manifest, version, node, backend, precision, batch size, INT8
source) into a frozen ``PredictorSpec`` and refuses, with a readable ``PrecisionUnsupportedError``,
anything the node cannot serve - no CUDA, no TensorRT, INT8 without a quantized model or a
calibration table. It imports nothing from Paddle, so every branch (TensorRT included) is unit
tested on any machine, and both the producer (which calibration table a job needs) and the
workers read it. ``workers/engines/paddle_config.apply`` is the only code that turns a spec into
``paddle.inference.Config`` calls.

The TensorRT parameters follow Paddle's TensorRT low-precision guide: ``workspace_size=1<<30``,
``min_subgraph_size=5``, ``precision_mode`` Float32 / Half / Int8, ``use_calib_mode=True`` only
for TensorRT's own calibration tables and ``False`` for models quantized offline or by QAT.
We set ``use_static=True`` so serialized engines are reused across restarts, from a cache
directory keyed by everything that changes the engine (``engine_cache_name``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from common.errors import PrecisionUnsupportedError
from common.manifest import ModelManifest
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB
from common.schemas import Backend, Device, Precision

TRT_WORKSPACE_BYTES = 1 << 30
TRT_MIN_SUBGRAPH_SIZE = 5
TRT_PRECISION_MODE = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}


@dataclass(frozen=True)
class NodeInfo:
    """What this process can do, as detected once at start (see workers/engines/probe.py)."""

    cuda: bool = False
    trt_compile_version: tuple[int, int, int] = (0, 0, 0)
    trt_runtime: bool = False
    gpu_name: str = ""
    gpu_compute_capability: str = ""
    paddle_version: str = ""
    cpu_bf16: bool = False
    cpu_count: int = 1
    gpu_count: int = 0
    gpu_selftest_ok: bool | None = None
    gpu_selftest: str = ""

    @property
    def has_trt(self) -> bool:
        return self.cuda and self.trt_compile_version != (0, 0, 0) and self.trt_runtime

    @property
    def trt_version(self) -> str:
        return ".".join(map(str, self.trt_compile_version)) if self.has_trt else ""

    def capabilities(self, device: Device) -> set[tuple[str, str]]:
        """(backend, precision) pairs this node serves on ``device`` ("cpu" or "gpu")."""
        if device == "cpu":
            caps = {("cpu", "fp32"), ("cpu", "int8")}
            if self.cpu_bf16:
                caps.add(("cpu", "bf16"))
            return caps
        caps = set()
        if not self.cuda or self.gpu_count < 1:
            return caps
        caps.add(("gpu", "fp32"))
        if self.has_trt:
            caps |= {("trt", "fp32"), ("trt", "fp16"), ("trt", "int8")}
        return caps

    def why_not(self, backend: str, precision: str) -> str:
        """A readable reason this node cannot serve (backend, precision)."""
        if backend in ("gpu", "trt") and not self.cuda:
            return (f"this node's Paddle {self.paddle_version} is built without CUDA "
                    f"(paddle.is_compiled_with_cuda() is False); {backend} needs paddlepaddle-gpu")
        if backend in ("gpu", "trt") and self.gpu_count < 1:
            return "no GPU is visible to this process (check CUDA_VISIBLE_DEVICES and the driver)"
        if backend == "trt" and self.trt_compile_version == (0, 0, 0):
            return ("this node's Paddle is not compiled with TensorRT "
                    "(paddle.inference.get_trt_compile_version() is (0, 0, 0))")
        if backend == "trt" and not self.trt_runtime:
            return ("TensorRT dynamic library (libnvinfer) is not found on this node; install TensorRT "
                    f"{self.trt_version or '.'.join(map(str, self.trt_compile_version))} and add it to "
                    "LD_LIBRARY_PATH")
        if backend == "cpu" and precision == "bf16" and not self.cpu_bf16:
            return "this CPU has neither AVX512-BF16 nor AMX-BF16, so oneDNN bf16 would not run natively"
        return f"{backend} does not serve {precision}"


@dataclass(frozen=True)
class TrtSettings:
    precision_mode: str
    use_calib_mode: bool
    max_batch_size: int
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    workspace_size: int = TRT_WORKSPACE_BYTES
    min_subgraph_size: int = TRT_MIN_SUBGRAPH_SIZE
    use_static: bool = True


@dataclass(frozen=True)
class PredictorSpec:
    version_id: str
    backend: Backend
    precision: Precision
    device: Device
    gpu_id: int = 0
    cpu_threads: int = 1
    gpu_memory_pool_mb: int = 1024
    int8_source: str | None = None
    trt: TrtSettings | None = None
    ir_optim: bool = True
    input_shape: tuple[int, ...] = ()
    node: dict[str, str] = field(default_factory=dict)

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Identity of a built predictor: keys the in-process predictor cache."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def calib_key(self) -> str:
        if self.trt is None:
            raise ValueError("calibration keys exist for TensorRT specs only")
        return calib_key_of(self.version_id, self.trt)

    def engine_cache_name(self) -> str:
        """Folder name of this spec's optimisation cache: version, precision, GPU name + compute
        capability, TensorRT and Paddle versions, batch shape range, and a hash of the rest."""
        parts = [self.version_id, self.backend, self.precision]
        if self.device == "gpu":
            gpu = "".join(c if c.isalnum() else "-" for c in self.node.get("gpu_name", "gpu"))
            parts += [gpu, "cc" + self.node.get("gpu_cc", "").replace(".", "")]
        if self.trt:
            parts += ["trt" + self.node.get("trt", ""),
                      f"bs{self.trt.min_shape[0]}-{self.trt.opt_shape[0]}-{self.trt.max_shape[0]}"]
        parts += ["paddle" + self.node.get("paddle", ""), self.key()[:8]]
        return "_".join(p for p in parts if p)


def calib_key_of(version_id: str, trt: TrtSettings) -> str:
    """Identity of a TensorRT calibration table: the model version and every TensorRT setting that
    shapes the engine (precision, shape ranges, max batch, min_subgraph_size, workspace), but not
    ``use_static`` / ``use_calib_mode`` (the calibration run and the serving run differ only there)
    nor the GPU (a table is portable across cards; engines are not)."""
    fields = {k: v for k, v in asdict(trt).items() if k not in ("use_static", "use_calib_mode")}
    data = {"version": version_id, "trt": fields}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def calib_key_for(manifest: ModelManifest, version_id: str, batch_size: int) -> str:
    """The calibration key a trt/int8 job of this batch size will look for (pure: any node)."""
    batch = min(batch_size, manifest.max_batch_size)
    return calib_key_of(version_id, _trt_settings(manifest, "int8", batch, INT8_TRT_CALIB))


def resolve_int8_source(manifest: ModelManifest, requested: str | None) -> str:
    if manifest.quantized:
        return INT8_QUANTIZED
    if requested == INT8_TRT_CALIB:
        return INT8_TRT_CALIB
    raise PrecisionUnsupportedError(
        f"INT8 for model {manifest.name!r} needs a quantized version or a TensorRT calibration "
        f"table; make one with `trtbatch calibrate --model {manifest.name} --images DIR --method ptq` "
        f"(any node) or `--method trt` (TensorRT nodes)")


def build_spec(manifest: ModelManifest, version_id: str, node: NodeInfo, device: Device, backend: Backend,
               precision: Precision, batch_size: int, int8_source: str | None = None, cpu_threads: int = 1,
               gpu_id: int = 0, gpu_memory_pool_mb: int = 1024) -> PredictorSpec:
    if (backend, precision) not in node.capabilities(device):
        raise PrecisionUnsupportedError(
            f"cannot build a {backend}/{precision} predictor here: {node.why_not(backend, precision)}")
    if batch_size < 1 or batch_size > manifest.max_batch_size:
        raise PrecisionUnsupportedError(
            f"batch size {batch_size} is outside 1..{manifest.max_batch_size} (model max_batch_size)")
    source = resolve_int8_source(manifest, int8_source) if precision == "int8" else None
    if source == INT8_TRT_CALIB and backend != "trt":
        raise PrecisionUnsupportedError("a TensorRT calibration table only serves the trt backend")
    node_tags = {"paddle": node.paddle_version}
    if device == "gpu":
        node_tags |= {"gpu_name": node.gpu_name, "gpu_cc": node.gpu_compute_capability,
                      "trt": node.trt_version}
    spec = PredictorSpec(version_id=version_id, backend=backend, precision=precision, device=device,
                         gpu_id=gpu_id, cpu_threads=max(1, cpu_threads), int8_source=source,
                         gpu_memory_pool_mb=gpu_memory_pool_mb, node=node_tags,
                         input_shape=tuple(manifest.input.shape))
    if backend == "trt":
        spec = replace(spec, trt=_trt_settings(manifest, precision, batch_size, source))
    return spec


def trt_shape_range(manifest: ModelManifest, batch_size: int) -> tuple[tuple[int, ...], ...]:
    """min / opt / max input shapes: batch 1, the job's batch, the model's max batch."""
    inp = manifest.input
    return inp.batch_shape(1), inp.batch_shape(batch_size), inp.batch_shape(manifest.max_batch_size)


def _trt_settings(manifest: ModelManifest, precision: str, batch_size: int,
                  source: str | None) -> TrtSettings:
    lo, opt, hi = trt_shape_range(manifest, batch_size)
    return TrtSettings(precision_mode=TRT_PRECISION_MODE[precision],
                       use_calib_mode=source == INT8_TRT_CALIB,
                       max_batch_size=manifest.max_batch_size, input_name=manifest.input.name,
                       min_shape=lo, opt_shape=opt, max_shape=hi)
