"""Cross-process messages and records: round trips, and DecodeError (only) on malformed input."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import msgpack
import pytest

from common.errors import DecodeError
from common.schemas import SCHEMA_VERSION, BatchPayload, BatchTask, CalibTask, PayloadItem, ResultRecord

TASK = BatchTask(job_id="j1", batch_no=3, payload_key="trtbatch:payload:j1:3", version_id="vabc", model="digits",
                 precision="int8", target="trt", batch_size=16, n_images=9, start_index=48,
                 int8_source="trt-calib", top_k=3, include_outputs=True)
CALIB = CalibTask(job_id="c1", version_id="vabc", model="digits", method="ptq", algo="KL",
                  payload_keys=("k1", "k2"), eval_payload_keys=("e1",), batch_size=8, samples=100,
                  calib_sha256="ab" * 32, new_version_name="digits@int8-ptq", drop_threshold_pt=0.5)
RECORD = ResultRecord(index=7, path="imgs/ä 7.png", ok=True, label="3",
                      top_k=[{"label": "3", "index": 3, "score": 0.75}, {"label": "8", "index": 8, "score": 0.25}],
                      notes=["EXIF orientation 6 applied"], job_id="j1", batch_no=0, model="digits",
                      version_id="vabc", precision="fp32", backend="cpu", worker="w@h", device="cpu")


def _json_roundtrip(data: Any) -> Any:
    return json.loads(json.dumps(data))  # what Celery's json serializer does to a task argument


def test_batch_task_round_trip() -> None:
    assert BatchTask.decode(_json_roundtrip(TASK.encode())) == TASK
    assert TASK.encode()["schema"] == SCHEMA_VERSION


def test_calib_task_round_trip() -> None:
    encoded = CALIB.encode()
    assert encoded["payload_keys"] == ["k1", "k2"]  # lists on the wire
    back = CalibTask.decode(_json_roundtrip(encoded))
    assert back == CALIB and isinstance(back.payload_keys, tuple) and isinstance(back.eval_payload_keys, tuple)


def test_decode_ignores_unknown_fields_and_defaults_schema() -> None:
    data = TASK.encode()
    data["added_in_a_later_minor"] = 1
    del data["schema"]
    assert BatchTask.decode(data) == TASK


def test_result_record_round_trip() -> None:
    text = RECORD.encode()
    assert isinstance(text, str)
    assert ResultRecord.decode(text) == RECORD
    assert ResultRecord.decode(text.encode()) == RECORD  # bytes, as redis-py returns them


def test_result_record_encode_is_compact_strict_json_without_nones() -> None:
    failed = ResultRecord(index=1, path="x.png", ok=False, error="empty file (0 bytes)", error_code="bad_image")
    text = failed.encode()

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(text, parse_constant=no_constants)
    assert "top_k" not in data and "label" not in data and data["error"] == "empty file (0 bytes)"
    assert " " not in text.replace("empty file (0 bytes)", "")
    assert ResultRecord.decode(text) == failed
    assert failed.as_row()["error"] == "empty file (0 bytes)" and "schema" not in failed.as_row()
    assert RECORD.as_row()["error"] is None  # the error column is always present


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_result_record_never_encodes_nan(bad: float) -> None:
    rec = dataclasses.replace(RECORD, top_k=[{"label": "0", "index": 0, "score": bad}])
    with pytest.raises(ValueError, match="JSON"):
        rec.encode()


def test_payload_round_trip_with_bytes_and_missing_data() -> None:
    payload = BatchPayload((
        PayloadItem(index=0, path="a.png", data=bytes(range(256)) * 3, label="7"),
        PayloadItem(index=1, path="caf\ufffd.png", data=None, error="permission denied"),
        PayloadItem(index=2, path="empty.png", data=b""),
    ))
    raw = payload.encode()
    assert isinstance(raw, bytes)
    back = BatchPayload.decode(raw)
    assert back == payload
    assert isinstance(back.items[0].data, bytes) and back.items[1].data is None and back.items[2].data == b""
    assert BatchPayload.decode(BatchPayload().encode()) == BatchPayload()


# -- malformed input: DecodeError and nothing else ------------------------------------------------
def _without(data: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != name}


BAD_BATCH_TASKS = [
    None, [], "job", 42, b"\x00",
    {**TASK.encode(), "schema": 2},
    {**TASK.encode(), "schema": "1"},
    _without(TASK.encode(), "job_id"),
    _without(TASK.encode(), "payload_key"),
    {**TASK.encode(), "batch_no": -1},
    {**TASK.encode(), "batch_no": "3"},
    {},
]


@pytest.mark.parametrize("bad", BAD_BATCH_TASKS)
def test_batch_task_decode_errors(bad: Any) -> None:
    with pytest.raises(DecodeError, match="BatchTask"):
        BatchTask.decode(bad)


BAD_CALIB_TASKS = [
    None, ["x"], "calib",
    {**CALIB.encode(), "schema": 0},
    _without(CALIB.encode(), "payload_keys"),
    _without(CALIB.encode(), "method"),
    {**CALIB.encode(), "payload_keys": None},
    {**CALIB.encode(), "payload_keys": 5},
    {**CALIB.encode(), "eval_payload_keys": 1.5},
    {**CALIB.encode(), "payload_keys": "k1"},  # a string is not a list of keys
    {**CALIB.encode(), "payload_keys": [1, 2]},
]


@pytest.mark.parametrize("bad", BAD_CALIB_TASKS)
def test_calib_task_decode_errors(bad: Any) -> None:
    with pytest.raises(DecodeError, match="CalibTask"):
        CalibTask.decode(bad)


BAD_PAYLOADS = [
    b"", b"\xc1", b"garbage bytes that are not msgpack \xff\xfe",
    msgpack.packb([SCHEMA_VERSION + 1, []]),
    msgpack.packb({"schema": 1}),
    msgpack.packb([SCHEMA_VERSION, [[0]]]),  # a row with missing columns
    msgpack.packb([SCHEMA_VERSION, [["x", "p", None, None, None]]]),  # index is not a number
    msgpack.packb([SCHEMA_VERSION]),
    msgpack.packb(7),
    None,
]


@pytest.mark.parametrize("bad", BAD_PAYLOADS)
def test_payload_decode_errors(bad: Any) -> None:
    with pytest.raises(DecodeError, match="BatchPayload"):
        BatchPayload.decode(bad)


BAD_RECORDS = [
    b"", b"\xff\xfe\xfa", "not json", "[1, 2]", "null", "7",
    json.dumps({**json.loads(RECORD.encode()), "schema": 9}),
    json.dumps(_without(json.loads(RECORD.encode()), "index")),
    json.dumps(_without(json.loads(RECORD.encode()), "ok")),
    None,
]


@pytest.mark.parametrize("bad", BAD_RECORDS)
def test_result_record_decode_errors(bad: Any) -> None:
    with pytest.raises(DecodeError, match="ResultRecord"):
        ResultRecord.decode(bad)
