"""Messages and records that cross process boundaries: frozen dataclasses, versioned, never pickle.

* ``BatchTask``    - the Celery message of one inference batch (JSON, keys only: claim-check).
* ``CalibTask``    - the Celery message of one calibration job.
* ``ConvertTask``  - the Celery message of one conversion job (a version to its ONNX forms).
* ``BatchPayload`` - the image bytes of one batch, stored in Redis as msgpack under the key the
                     task names.
* ``ResultRecord`` - one image's outcome, stored as JSON in the job's results hash.
* ``JobRecord``    - a job's metadata and counters: the ``trtbatch:job:<id>`` hash.
* ``SlotState``    - one pipeline slot's fleet record: the ``trtbatch:worker:<name>:slot:<n>`` hash.
* ``BatchTimings`` - when each step of one batch ran on its worker: the job's timings hash.

Every ``decode`` raises ``DecodeError`` and nothing else on malformed input.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import msgpack

from common.errors import DecodeError

SCHEMA_VERSION = 1
T = TypeVar("T")

#: Where a predictor runs: oneDNN on the CPU, native CUDA, TensorRT subgraphs.
Backend = Literal["cpu", "gpu", "trt"]
#: What a job may ask for: one backend, or any worker that serves the precision.
Target = Literal["any", "cpu", "gpu", "trt"]
Precision = Literal["fp32", "fp16", "int8", "bf16"]
#: The kind of device a worker process is pinned to.
Device = Literal["cpu", "gpu"]
#: What runs the model: Paddle Inference, or ONNX Runtime on the paddle2onnx-converted model.
Engine = Literal["paddle", "onnxruntime"]
EngineTarget = Literal["any", "paddle", "onnxruntime"]
JobState = Literal["submitting", "queued", "running", "done", "failed", "cancelled"]
TERMINAL_STATES: tuple[JobState, ...] = ("done", "failed", "cancelled")


def _from_dict(cls: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise DecodeError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise DecodeError(f"{cls.__name__}: schema {schema!r} is not {SCHEMA_VERSION}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class BatchTask:
    """One batch of one job. Carries keys, never image bytes."""

    job_id: str
    batch_no: int
    payload_key: str
    version_id: str
    model: str
    precision: Precision
    target: Target
    batch_size: int
    n_images: int
    start_index: int = 0
    int8_source: str | None = None
    top_k: int = 5
    include_outputs: bool = False
    engine: EngineTarget = "any"
    schema: int = SCHEMA_VERSION

    def encode(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def decode(cls, data: Any) -> BatchTask:
        task = _from_dict(cls, data)
        if not isinstance(task.batch_no, int) or task.batch_no < 0:
            raise DecodeError(f"BatchTask: bad batch_no {task.batch_no!r}")
        return task


@dataclass(frozen=True)
class CalibTask:
    """One calibration job: PTQ (any worker) or TensorRT calibration (TensorRT workers)."""

    job_id: str
    version_id: str
    model: str
    method: str
    algo: str
    payload_keys: tuple[str, ...]
    eval_payload_keys: tuple[str, ...] = ()
    batch_size: int = 16
    samples: int = 0
    calib_sha256: str = ""
    new_version_name: str = ""
    drop_threshold_pt: float = 1.0
    engine: Engine = "paddle"
    schema: int = SCHEMA_VERSION

    def encode(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["payload_keys"] = list(self.payload_keys)
        out["eval_payload_keys"] = list(self.eval_payload_keys)
        return out

    @classmethod
    def decode(cls, data: Any) -> CalibTask:
        task = _from_dict(cls, data)
        for name in ("payload_keys", "eval_payload_keys"):
            value = getattr(task, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
                raise DecodeError(f"CalibTask: {name} must be a list of keys, got {value!r}")
        return dataclasses.replace(task, payload_keys=tuple(task.payload_keys),
                                   eval_payload_keys=tuple(task.eval_payload_keys))


@dataclass(frozen=True)
class ConvertTask:
    """One conversion job: a model version to its ONNX forms (fp32, and fp16 when asked), each checked
    against the source's own outputs before it is published."""

    job_id: str
    version_id: str
    model: str
    fp16: bool = True
    check_payload_keys: tuple[str, ...] = ()
    force: bool = False
    schema: int = SCHEMA_VERSION

    def encode(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["check_payload_keys"] = list(self.check_payload_keys)
        return out

    @classmethod
    def decode(cls, data: Any) -> ConvertTask:
        task = _from_dict(cls, data)
        keys_ = task.check_payload_keys
        if not isinstance(keys_, (list, tuple)) or not all(isinstance(k, str) for k in keys_):
            raise DecodeError(f"ConvertTask: check_payload_keys must be a list of keys, got {keys_!r}")
        return dataclasses.replace(task, check_payload_keys=tuple(keys_))


@dataclass(frozen=True)
class PayloadItem:
    """One image of a batch: its bytes, or the reason the producer could not read it."""

    index: int
    path: str
    data: bytes | None = None
    label: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchPayload:
    items: tuple[PayloadItem, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        rows = [[it.index, it.path, it.data, it.label, it.error] for it in self.items]
        return msgpack.packb([SCHEMA_VERSION, rows], use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> BatchPayload:
        try:
            schema, rows = msgpack.unpackb(raw, raw=False)
            if schema != SCHEMA_VERSION:
                raise DecodeError(f"BatchPayload: schema {schema!r} is not {SCHEMA_VERSION}")
            return cls(tuple(PayloadItem(int(r[0]), str(r[1]), r[2], r[3], r[4]) for r in rows))
        except DecodeError:
            raise
        except Exception as exc:  # msgpack raises many types on garbage, some with no message
            raise DecodeError(f"BatchPayload: {type(exc).__name__}: {exc}".rstrip(": ")) from exc


@dataclass(frozen=True)
class ResultRecord:
    """One image's outcome. ``ok`` is False exactly when ``error`` is set."""

    index: int
    path: str
    ok: bool
    error: str | None = None
    error_code: str | None = None
    label: str | None = None
    top_k: list[dict[str, Any]] | None = None
    outputs: dict[str, Any] | None = None
    notes: list[str] | None = None
    job_id: str = ""
    batch_no: int = -1
    model: str = ""
    version_id: str = ""
    precision: str = ""
    engine: str = ""
    backend: str = ""
    worker: str = ""
    device: str = ""
    schema: int = SCHEMA_VERSION

    def encode(self) -> str:
        # fields read directly: dataclasses.asdict deep-copies every top-k entry first (2x slower)
        data = {name: value for name in _RECORD_FIELDS if (value := getattr(self, name)) is not None}
        return _RECORD_ENCODER.encode(data)

    @classmethod
    def decode(cls, raw: str | bytes) -> ResultRecord:
        try:
            data = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"ResultRecord: {exc}") from exc
        return _from_dict(cls, data)

    def as_row(self) -> dict[str, Any]:
        """The public form of a record (what `trtbatch results` prints)."""
        data = dataclasses.asdict(self)
        data.pop("schema")
        return {k: v for k, v in data.items() if v is not None or k == "error"}


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(ResultRecord))
#: one encoder for every record: json.dumps with arguments builds a new one per call
_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


# -- hash records --------------------------------------------------------------------------------
def hash_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))


def _parse_value(typ: Any, text: str) -> Any:
    if get_origin(typ) in (Union, types.UnionType):  # Optional[X]: a None field is never stored
        typ = next(a for a in get_args(typ) if a is not type(None))
    origin = get_origin(typ)
    if typ is bool:
        return text == "1"
    if typ in (int, float):
        return typ(text)
    if typ is str or origin is Literal:
        return text
    value = json.loads(text)  # tuple / dict / list fields
    return tuple(value) if origin is tuple else value


def to_hash(record: Any) -> dict[str, str]:
    """A record as Redis hash fields: None fields left out, containers as JSON."""
    return {f.name: hash_value(v) for f in fields(record) if (v := getattr(record, f.name)) is not None}


def from_hash(cls: type[T], raw: dict[bytes, bytes] | dict[str, str]) -> T:
    """Rebuild a record from its hash; fields it does not know (a newer writer) are ignored."""
    hints = get_type_hints(cls)
    data: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name in hints:
                text = value.decode() if isinstance(value, bytes) else value
                data[name] = _parse_value(hints[name], text)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from exc
    return _from_dict(cls, data)


@dataclass(frozen=True)
class JobRecord:
    """A job: what it runs and how far it got. Counters (``done``, ``failed``, ``n_enqueued``,
    ``batches_*``) are incremented in place by the store's Lua scripts, the rest is set whole."""

    job_id: str
    state: JobState = "submitting"
    kind: str = "inference"  # inference | calibration | conversion | naive-baseline (benchmarks)
    model: str = ""
    requested_model: str = ""
    version_id: str = ""
    precision: Precision = "fp32"
    target: Target = "any"
    engine: EngineTarget = "any"
    queue: str = ""
    batch_size: int = 0
    top_k: int = 0
    int8_source: str | None = None
    include_outputs: bool = False
    options: dict[str, Any] | None = None  # the submit options, to resume the submission
    producer: str = ""
    created_s: float = 0.0
    updated_s: float = 0.0
    finished_s: float | None = None
    #: when the producer stopped sending: every image sent, or the job ended first (cancelled,
    #: unservable); a ``submit --resume`` sets it again
    submitted_s: float | None = None
    cancelled_s: float | None = None
    #: when a check first found no live worker serving the job's queue (cleared when one appears)
    unservable_since: float | None = None
    submit_complete: bool = False
    n_images: int = 0
    n_batches: int = 0
    n_enqueued: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    batches_done: int = 0
    batches_dead: int = 0
    # calibration jobs
    method: str = ""
    algo: str = ""
    eval_images: int = 0
    worker: str = ""
    error: str | None = None
    result_name: str = ""
    result_version: str = ""
    warnings: tuple[str, ...] = ()
    calibration_s: float | None = None
    samples: int = 0
    # conversion jobs: what each published ONNX form is, with its check against the source
    conversions: tuple[dict[str, Any], ...] = ()
    schema: int = SCHEMA_VERSION

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def sent_images(self) -> int:
        """Images the job has so far: all of them once submitted, else those sent."""
        return self.n_images if self.submit_complete else self.n_enqueued

    def encode(self) -> dict[str, str]:
        return to_hash(self)

    @classmethod
    def decode(cls, raw: dict[bytes, bytes]) -> JobRecord:
        return from_hash(cls, raw)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["warnings"], data["conversions"] = list(self.warnings), list(self.conversions)
        return data


@dataclass(frozen=True)
class SlotState:
    """What one pipeline slot (a Celery pool process) is doing, for ``trtbatch workers``."""

    state: str = "starting"  # starting | warming | ready
    pid: int = 0
    start_id: str = ""  # the worker start it belongs to (WarmGate waits for its own slots)
    started_s: float = 0.0
    ready_s: float | None = None
    updated_s: float = 0.0
    current_batch: str | None = None  # "<job>:<batch>" while one runs
    batches: int = 0
    last_batch_s: float | None = None
    last_error: str | None = None
    predictors: tuple[dict[str, Any], ...] = ()
    warm: tuple[dict[str, Any], ...] = ()
    schema: int = SCHEMA_VERSION

    def encode(self) -> dict[str, str]:
        # JSON per field, and "null" rather than a missing field: a slot that finished its batch must
        # overwrite ``current_batch``, not leave the old one in place
        return {f.name: json.dumps(_plain(getattr(self, f.name))) for f in fields(self)}

    @classmethod
    def decode(cls, raw: dict[bytes, bytes]) -> SlotState:
        try:
            data = {k.decode(): json.loads(v) for k, v in raw.items()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"SlotState: {exc}") from exc
        for name in ("predictors", "warm"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        return _from_dict(cls, data)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class PipelineMode(str, enum.Enum):
    """How a worker's pipeline slots share its device (chosen at start, see workers/process/main.py)."""

    #: Slots share the device and decode under its lock: decoding beside a predictor that already uses
    #: every core would only make the predictor straggle.
    DECODE_UNDER_LOCK = "decode-under-lock"
    #: Slots share the device; one decodes batch k+1 while another runs batch k (GPU workers).
    OVERLAPPED = "overlapped"
    #: CPU cores are split between the slots: each decodes and infers on its own cores.
    PARTITIONED = "partitioned"


@dataclass(frozen=True)
class BatchTimings:
    """When each step of one batch ran (unix s), stored per batch for the benchmarks."""

    started_s: float
    fetched_s: float
    decode_start_s: float
    decode_end_s: float
    infer_start_s: float
    infer_end_s: float
    postprocessed_s: float
    pid: int
    mode: PipelineMode
    #: host -> device bytes the batch cost (encoded JPEGs on the GPU decode path, float32 tensors else)
    h2d_bytes: int = 0
    #: images of the batch decoded on the GPU (the rest went the Pillow path)
    gpu_decoded: int = 0
    #: the slot that ran it (thread slots share one pid)
    slot: int = 0
    schema: int = SCHEMA_VERSION

    def encode(self) -> str:
        data = dataclasses.asdict(self)
        data["mode"] = self.mode.value
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> BatchTimings:
        try:
            data = json.loads(raw)
            data["mode"] = PipelineMode(data["mode"])
        except (ValueError, TypeError, KeyError) as exc:
            raise DecodeError(f"BatchTimings: {exc}") from exc
        return _from_dict(cls, data)
