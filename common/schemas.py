"""Messages and records that cross process boundaries: frozen dataclasses, versioned, never pickle.

* ``BatchTask``    - the Celery message of one inference batch (JSON, keys only: claim-check).
* ``CalibTask``    - the Celery message of one calibration job.
* ``BatchPayload`` - the image bytes of one batch, stored in Redis as msgpack under the key the
                     task names.
* ``ResultRecord`` - one image's outcome, stored as JSON in the job's results hash.

Every ``decode`` raises ``DecodeError`` and nothing else on malformed input.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import msgpack

from common.errors import DecodeError

SCHEMA_VERSION = 1
T = TypeVar("T")


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
    precision: str
    target: str
    batch_size: int
    n_images: int
    start_index: int = 0
    int8_source: str | None = None
    top_k: int = 5
    include_outputs: bool = False
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
    backend: str = ""
    worker: str = ""
    device: str = ""
    schema: int = SCHEMA_VERSION

    def encode(self) -> str:
        # fields read directly: dataclasses.asdict deep-copies every top-k entry first (2x slower)
        data = {name: value for name in _RECORD_FIELDS if (value := getattr(self, name)) is not None}
        return json.dumps(data, separators=(",", ":"), allow_nan=False)

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
