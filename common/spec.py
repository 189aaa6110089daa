"""Predictor specs: the pure decision of *how* to build a predictor, for either engine.

``build_spec`` turns (model manifest, version, node, engine, backend, precision, batch size, INT8
source) into a frozen ``PredictorSpec`` and refuses, with a readable ``PrecisionUnsupportedError``,
anything the node cannot serve - no CUDA, no TensorRT, INT8 without a quantized model or a
calibration table. It imports no engine, so every branch (TensorRT included) is unit tested on any
machine, and both the producer (which calibration table a job needs) and the workers read it.
One thin function per engine applies a spec: ``workers/engines/paddle_config.apply`` (Paddle
Inference ``Config`` calls) and ``workers/engines/ort_config.session_args`` (ONNX Runtime
session options and execution providers).

TensorRT parameters follow Paddle's TensorRT low-precision guide on both engines:
``workspace_size=1<<30``, ``min_subgraph_size=5``, precision Float32 / Half / Int8,
``use_calib_mode=True`` only for TensorRT's own calibration tables and ``False`` for models quantized
offline or by QAT. Engines are serialized and reused across restarts, from a cache directory keyed by
everything that changes them (``engine_cache_name``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from common.errors import PrecisionUnsupportedError
from common.manifest import ModelManifest
from common.node import CPU_EP, CUDA_EP, TRT_EP, NodeInfo
from common.routing import INT8_QUANTIZED, INT8_TRT_CALIB
from common.schemas import Backend, Device, Engine, Precision

TRT_WORKSPACE_BYTES = 1 << 30
TRT_MIN_SUBGRAPH_SIZE = 5
TRT_PRECISION_MODE = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}
ORT_PROVIDER = {"cpu": CPU_EP, "gpu": CUDA_EP, "trt": TRT_EP}
#: The file name, in a TensorRT engine cache folder, of the calibration table ONNX Runtime's
#: calibrator wrote (its FlatBuffers format, read with trt_int8_use_native_calibration_table=0).
ORT_CALIBRATION_TABLE = "calibration.flatbuffers"


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
class OrtSettings:
    """How an ONNX Runtime session is made: one execution provider and its decisions."""

    provider: str
    #: which ONNX form of the model: fp32, fp16 (ONNX Runtime's float16 converter) or qdq (quantized)
    model_variant: str
    intra_op_threads: int = 1
    #: CUDA EP: NHWC convolutions (measured 11,789 vs 9,693 img/s on ResNet50 FP16 bs256, H200)
    prefer_nhwc: bool = False
    #: TensorRT EP: precision flags (INT8 also enables FP16: layers TensorRT cannot run in INT8 then run
    #: in FP16, not FP32) and an ONNX Runtime calibration table (route a of the guide)
    trt_fp16: bool = False
    trt_int8: bool = False
    trt_calibration_table: bool = False
    trt: TrtSettings | None = None
    #: CUDA EP: run on a stream of the predictor's own (non-blocking, copies off the legacy default
    #: stream), so the engine never waits on - nor holds up - other work on the GPU (setting gpu_engine_stream)
    own_stream: bool = False


@dataclass(frozen=True)
class PredictorSpec:
    version_id: str
    backend: Backend
    precision: Precision
    device: Device
    engine: Engine = "paddle"
    gpu_id: int = 0
    cpu_threads: int = 1
    gpu_memory_pool_mb: int = 1024
    int8_source: str | None = None
    trt: TrtSettings | None = None
    ort: OrtSettings | None = None
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
            raise ValueError("calibration keys exist for Paddle-TensorRT specs only")
        return calib_key_of(self.version_id, self.trt)

    def engine_cache_name(self) -> str:
        """Folder name of this spec's optimisation cache: version, engine, precision, GPU name +
        compute capability, TensorRT and engine versions, batch shape range, and a hash of the rest."""
        parts = [self.version_id, self.engine, self.backend, self.precision]
        if self.device == "gpu":
            gpu = "".join(c if c.isalnum() else "-" for c in self.node.get("gpu_name", "gpu"))
            parts += [gpu, "cc" + self.node.get("gpu_cc", "").replace(".", "")]
        trt = self.trt or (self.ort.trt if self.ort else None)
        if trt:
            parts += ["trt" + self.node.get("trt", ""),
                      f"bs{trt.min_shape[0]}-{trt.opt_shape[0]}-{trt.max_shape[0]}"]
        parts += [self.engine.replace("onnxruntime", "ort") + self.node.get(self.engine, ""), self.key()[:8]]
        return "_".join(p for p in parts if p)


def calib_key_of(version_id: str, trt: TrtSettings) -> str:
    """Identity of a Paddle-TensorRT calibration table: the model version and every TensorRT setting
    that shapes the engine (precision, shape ranges, max batch, min_subgraph_size, workspace), but not
    ``use_static`` / ``use_calib_mode`` (the calibration run and the serving run differ only there)
    nor the GPU (a table is portable across cards; engines are not)."""
    fields = {k: v for k, v in asdict(trt).items() if k not in ("use_static", "use_calib_mode")}
    data = {"version": version_id, "trt": fields}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def calib_key_for(manifest: ModelManifest, version_id: str, batch_size: int) -> str:
    """The calibration key a Paddle trt/int8 job of this batch size will look for (pure: any node)."""
    batch = min(batch_size, manifest.max_batch_size)
    return calib_key_of(version_id, _trt_settings(manifest, "int8", batch, INT8_TRT_CALIB))


#: ONNX Runtime's calibration tables hold one range per tensor of the model: they do not depend on
#: batch sizes or profiles, so they are keyed by the (FP32 ONNX) version alone.
ORT_CALIB_KEY = "onnxruntime"


def ort_model_variant(backend: str, precision: str, int8_source: str | None) -> str:
    """Which ONNX form serves (backend, precision): the CUDA EP runs FP16 from the FP16-converted
    model; TensorRT builds FP16 from the FP32 model (trt_fp16_enable); INT8 is the quantized (QDQ)
    model, or the FP32 model plus a calibration table on TensorRT."""
    if precision == "fp16" and backend == "gpu":
        return "fp16"
    if precision == "int8" and int8_source == INT8_QUANTIZED:
        return "qdq"
    return "fp32"


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
               gpu_id: int = 0, gpu_memory_pool_mb: int = 1024, engine: Engine = "paddle",
               own_stream: bool = False) -> PredictorSpec:
    if (engine, backend, precision) not in node.capabilities(device):
        raise PrecisionUnsupportedError(f"cannot build a {engine} {backend}/{precision} predictor here: "
                                        f"{node.why_not(engine, backend, precision)}")
    if batch_size < 1 or batch_size > manifest.max_batch_size:
        raise PrecisionUnsupportedError(
            f"batch size {batch_size} is outside 1..{manifest.max_batch_size} (model max_batch_size)")
    source = resolve_int8_source(manifest, int8_source) if precision == "int8" else None
    if source == INT8_TRT_CALIB and backend != "trt":
        raise PrecisionUnsupportedError("a TensorRT calibration table only serves the trt backend")
    if engine == "paddle" and manifest.format != "paddle":
        raise PrecisionUnsupportedError(f"{manifest.name} is an ONNX model: only the onnxruntime engine serves it")
    spec = PredictorSpec(version_id=version_id, backend=backend, precision=precision, device=device, engine=engine,
                         gpu_id=gpu_id, cpu_threads=max(1, cpu_threads), int8_source=source,
                         gpu_memory_pool_mb=gpu_memory_pool_mb, node=_node_tags(node, device, engine),
                         input_shape=tuple(manifest.input.shape))
    if engine == "onnxruntime":
        ort = _ort_settings(manifest, backend, precision, batch_size, source, cpu_threads)
        return replace(spec, ort=replace(ort, own_stream=own_stream and ort.provider == CUDA_EP))
    if backend == "trt":
        spec = replace(spec, trt=_trt_settings(manifest, precision, batch_size, source))
    return spec


def _node_tags(node: NodeInfo, device: Device, engine: Engine) -> dict[str, str]:
    """What of the node shapes a built engine: it keys engine caches (never a table: tables travel)."""
    tags = {engine: node.paddle_version if engine == "paddle" else node.ort_version}
    if device == "gpu":
        trt = node.trt_version if engine == "paddle" else node.trt_runtime_version
        tags |= {"gpu_name": node.gpu_name, "gpu_cc": node.gpu_compute_capability, "trt": trt}
    return tags


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


def _ort_settings(manifest: ModelManifest, backend: str, precision: str, batch_size: int, source: str | None,
                  cpu_threads: int) -> OrtSettings:
    variant = ort_model_variant(backend, precision, source)
    if backend == "cpu":
        return OrtSettings(provider=CPU_EP, model_variant=variant, intra_op_threads=max(1, cpu_threads))
    if backend == "gpu":
        return OrtSettings(provider=CUDA_EP, model_variant=variant, prefer_nhwc=precision == "fp16")
    return OrtSettings(provider=TRT_EP, model_variant=variant, trt_fp16=precision in ("fp16", "int8"),
                       trt_int8=precision == "int8", trt_calibration_table=source == INT8_TRT_CALIB,
                       trt=_trt_settings(manifest, precision, batch_size, source))
