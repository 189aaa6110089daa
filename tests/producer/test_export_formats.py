"""``results`` formats: Parquet (typed columns, streamed in row groups), the format implied by the ``-o``
suffix, and the refusals (a suffix that contradicts ``-f``, Parquet to stdout, no pyarrow).

Records are written through common/store.py into a real redis-server (database 1, flushed around each
test) and exported with the real library and the real ``trtbatch`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from common import keys
from common.errors import InputError
from common.schemas import JobRecord, ResultRecord
from common.store import JobStore
from producer import export
from producer.client import Client

JOB = "20990101-000000-0f0f0f0f"
ENTRY = "from cli import main; main()"
NO_PYARROW = "import sys; sys.modules['pyarrow'] = None; from cli import main; main()"


def record(i: int, job_id: str = JOB) -> ResultRecord:
    """Image ``i``: every seventh fails, every third carries a label, image 5 has raw outputs (one of them
    summarised by the worker, as an output over MAX_RAW_VALUES is)."""
    if i % 7 == 6:
        return ResultRecord(index=i, path=f"/data/shots/{i:06d}.jpg", ok=False, error="truncated JPEG",
                            error_code="bad_image", job_id=job_id, batch_no=i // 1000, model="digits",
                            version_id="v1", precision="fp32")
    top = [{"label": str((i + j) % 10), "index": (i + j) % 10, "score": 0.5 / (j + 1) + 1e-9 * i} for j in range(3)]
    outputs = {"logits": [[0.25, -1.5], [2.0, 3.0]], "big": {"shape": [5000], "mean": 0.1, "max": 1.0}} \
        if i == 5 else None
    return ResultRecord(index=i, path=f"/data/shots/{i:06d}.jpg", ok=True, label=str(i % 10) if i % 3 == 0 else None,
                        top_k=top, outputs=outputs, notes=["converted CMYK to RGB"] if i == 2 else None,
                        job_id=job_id, batch_no=i // 1000, model="digits", version_id="v1", precision="fp32",
                        engine="paddle", backend="cpu", worker="w@h", device="cpu")


def make_job(conn: redis.Redis, n: int, job_id: str = JOB, per_batch: int = 1000) -> str:
    """A finished job of ``n`` images, written the way workers write them (idempotent batch writes)."""
    store = JobStore(conn, 3600)
    assert store.create_job(JobRecord(job_id=job_id, model="digits", version_id="v1", precision="fp32",
                                      queue="trtbatch.any.fp32", batch_size=per_batch))
    for batch_no, start in enumerate(range(0, n, per_batch)):
        records = [record(i, job_id) for i in range(start, min(start + per_batch, n))]
        store.write_batch(job_id, batch_no, records, keys.payload(job_id, batch_no))
    store.mark_submitted(job_id, n, (n + per_batch - 1) // per_batch)
    return job_id


def trtbatch(env: dict[str, str], cwd: Path, *args: str, entry: str = ENTRY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", entry, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=str(cwd), check=False)


def jsonl_rows(client: Client, job_id: str = JOB) -> list[dict]:
    return [rec.as_row() for rec in client.store.iter_results(job_id)]


# -- Parquet ---------------------------------------------------------------------------------------------
def test_parquet_columns_have_real_types_and_equal_the_jsonl_values(store_client: Client, store_conn: redis.Redis,
                                                                    tmp_path: Path) -> None:
    make_job(store_conn, 30)
    n, target = export.export_file(store_client, JOB, "parquet", tmp_path / "r.parquet")
    assert n == 30 and target == tmp_path / "r.parquet"
    table = pq.read_table(target)
    types = {f.name: f.type for f in table.schema}
    assert types["index"] == pa.int64() and types["ok"] == pa.bool_() and types["top1_score"] == pa.float64()
    assert types["path"] == pa.string() and types["batch_no"] == pa.int64()
    assert types["top_k"] == pa.list_(pa.struct([("label", pa.string()), ("index", pa.int32()),
                                                 ("score", pa.float64())]))
    assert types["outputs"] == pa.map_(pa.string(), pa.list_(pa.float64()))
    assert set(export.CSV_COLUMNS) <= set(types)
    assert json.loads(table.schema.metadata[b"trtbatch.job"])["job_id"] == JOB

    rows = table.to_pylist()
    for got, want in zip(rows, jsonl_rows(store_client), strict=True):
        assert got["index"] == want["index"] and got["path"] == want["path"] and got["ok"] is want["ok"]
        assert got["error"] == want["error"] and got["error_code"] == want.get("error_code")
        assert got["label"] == want.get("label")
        assert got["top_k"] == want.get("top_k")  # the same scores, to the last bit
        top = (want.get("top_k") or [{}])[0]
        assert got["top1_label"] == top.get("label") and got["top1_score"] == top.get("score")
        assert got["notes"] == want.get("notes")
    assert rows[6]["ok"] is False and rows[6]["top_k"] is None and rows[6]["engine"] is None  # null, not ""
    assert rows[5]["outputs"] == [("logits", [0.25, -1.5, 2.0, 3.0]), ("big", None)]  # flattened; summary: null
    assert rows[4]["outputs"] is None


def test_parquet_is_streamed_in_row_groups(store_client: Client, store_conn: redis.Redis, tmp_path: Path) -> None:
    make_job(store_conn, 2500)
    n, target = export.export_file(store_client, JOB, "parquet", tmp_path / "r.parquet", rows_per_group=1000)
    meta = pq.ParquetFile(target).metadata
    assert n == meta.num_rows == 2500
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    failed, _ = export.export_file(store_client, JOB, "parquet", tmp_path / "f.parquet", failed_only=True)
    assert failed == len([i for i in range(2500) if i % 7 == 6])
    assert set(pq.read_table(tmp_path / "f.parquet", columns=["ok"]).column("ok").to_pylist()) == {False}


def test_an_empty_job_gives_a_valid_parquet_file(store_client: Client, store_conn: redis.Redis,
                                                 tmp_path: Path) -> None:
    make_job(store_conn, 0)
    n, target = export.export_file(store_client, JOB, "parquet", tmp_path / "r.parquet")
    assert n == 0 and pq.read_table(target).num_rows == 0


def test_cli_parquet_from_the_suffix_in_row_groups_of_10000(cli_env: dict[str, str], store_conn: redis.Redis,
                                                            tmp_path: Path) -> None:
    make_job(store_conn, 12_000)
    res = trtbatch(cli_env, tmp_path, "results", JOB, "-o", "r.parquet")  # no -f: the suffix says parquet
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == f"wrote 12000 records to {tmp_path / 'r.parquet'}"
    assert (tmp_path / "r.parquet").read_bytes()[:4] == b"PAR1"
    meta = pq.ParquetFile(tmp_path / "r.parquet").metadata
    assert meta.num_rows == 12_000 and meta.num_row_groups == 2 and meta.row_group(0).num_rows == 10_000
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["r.parquet"]  # no temporary file left


# -- the format from the suffix, and what is refused -----------------------------------------------------
@pytest.mark.parametrize(("fmt", "output", "want"), [
    (None, None, "jsonl"), (None, "r.jsonl", "jsonl"), (None, "r.JSON", "jsonl"), (None, "r.csv", "csv"),
    (None, "out/r.parquet", "parquet"), (None, "r.txt", "jsonl"), ("csv", "r.txt", "csv"), ("csv", None, "csv"),
    ("parquet", "r.parquet", "parquet"), ("jsonl", "r.json", "jsonl")])
def test_choose_format(fmt: str | None, output: str | None, want: str) -> None:
    assert export.choose_format(fmt, output) == want


def test_choose_format_refusals() -> None:
    with pytest.raises(InputError, match=r"-f csv does not match the output file r.parquet \(.parquet is parquet\)"):
        export.choose_format("csv", "r.parquet")
    with pytest.raises(InputError, match="-f parquet does not match"):
        export.choose_format("parquet", "r.csv")
    with pytest.raises(InputError, match=r"parquet is a binary file format, not a stream: give -o FILE\.parquet"):
        export.choose_format("parquet", None)


def test_cli_suffix_formats_and_refusals(cli_env: dict[str, str], store_conn: redis.Redis, tmp_path: Path) -> None:
    make_job(store_conn, 20)
    res = trtbatch(cli_env, tmp_path, "results", JOB, "-o", "r.csv")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == ",".join(export.CSV_COLUMNS)
    res = trtbatch(cli_env, tmp_path, "results", JOB, "-o", "r.json")
    assert res.returncode == 0 and json.loads((tmp_path / "r.json").read_text().splitlines()[0])["index"] == 0

    for args, message in [(("-f", "csv", "-o", "x.parquet"), "-f csv does not match the output file x.parquet"),
                          (("-f", "parquet"), "give -o FILE.parquet"),
                          (("-f", "jsonl", "-o", "x.csv"), "-f jsonl does not match the output file x.csv")]:
        res = trtbatch(cli_env, tmp_path, "results", JOB, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, args
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.csv").exists()


def test_cli_parquet_without_pyarrow_says_what_to_install(cli_env: dict[str, str], store_conn: redis.Redis,
                                                          tmp_path: Path) -> None:
    make_job(store_conn, 3)
    res = trtbatch(cli_env, tmp_path, "results", JOB, "-o", "r.parquet", entry=NO_PYARROW)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: Parquet export needs pyarrow, which is not installed: pip install 'trtbatch[parquet]'"]
    assert list(tmp_path.iterdir()) == [] or [p.name for p in tmp_path.iterdir()] == ["state"]
    res = trtbatch(cli_env, tmp_path, "results", JOB, "-o", "r.csv", entry=NO_PYARROW)  # the rest works
    assert res.returncode == 0, res.stderr
