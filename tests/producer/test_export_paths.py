"""Export paths cannot escape where the user pointed: ``results --dir OUT`` (one JSON file per image,
named after image paths that come from users and manifests) and ``results -o FILE``.

Records are written through common/store.py into a real redis-server (database 1, flushed around each
test) and exported with the real library and the real ``trtbatch`` entry point."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from common import keys
from common.schemas import JobRecord, ResultRecord
from common.store import JobStore
from producer import export as jobs
from producer.client import Client

ENTRY = "from cli import main; main()"
JOB = "20990101-000000-e4907a75"

HOSTILE = [
    "../../etc/x.png",
    "/abs/y.png",
    "a/../../b.png",
    "link/z.png",  # OUT/link is a symbolic link to a folder outside OUT
    "nul\x00byte/ctrl\x1b[31m.png",
    "x.png",
    "./x.png",  # the same name as x.png
    "../x.png",  # and again
    "/",
    "..",
    "q" * 300 + ".png",
    "a",  # a.json, a file ...
    "a.json/inside.png",  # ... where this image wants a folder
]


def make_job(conn: redis.Redis, paths: list[str], job_id: str = JOB) -> str:
    """A finished job whose records carry ``paths``, written the way workers write them."""
    store = JobStore(conn, 3600)
    assert store.create_job(JobRecord(job_id=job_id, model="digits", version_id="v1", precision="fp32", target="any",
                                      queue="trtbatch.any.fp32"))
    records = [ResultRecord(index=i, path=p, ok=i % 5 != 4, error=None if i % 5 != 4 else "bad image",
                            top_k=[{"label": str(i % 10), "index": i % 10, "score": 0.9}], job_id=job_id)
               for i, p in enumerate(paths)]
    store.write_batch(job_id, 0, records, keys.payload(job_id, 0))
    assert store.mark_submitted(job_id, len(paths), 1) == "done"
    return job_id


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links not followed): file bytes, or a link's target."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                out[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                out[str(path)] = path.read_bytes()
            else:
                out[str(path)] = "dir"
    return out


def written_files(out: Path) -> dict[str, dict]:
    """Relative name -> parsed JSON of every regular file under ``out`` (links not followed)."""
    found = {}
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                found[str(path.relative_to(out))] = json.loads(path.read_text(encoding="utf-8"))
    return found


@pytest.mark.parametrize("path", [*HOSTILE, "\\..\\..\\win.png", "a/./b/../../../../c.png", "é/\udc80.png"])
def test_safe_parts_cannot_climb(path: str) -> None:
    parts = jobs.safe_parts(path)
    for part in parts:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\x00" not in part
        assert len(part.encode("utf-8")) <= jobs.MAX_COMPONENT_BYTES
    joined = os.path.join("/out", *parts)
    assert os.path.normpath(joined) == joined  # nothing left for normalization to resolve


def test_hostile_image_paths_land_inside_out(store_client: Client, store_conn: redis.Redis, tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    make_job(store_conn, HOSTILE)
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(str(out) + os.sep)}

    report = jobs.export_dir(store_client, JOB, out)

    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(str(out) + os.sep)}
    assert after == before  # nothing written next to OUT, nor through the link into elsewhere/
    assert not list(elsewhere.iterdir())
    assert not Path("/abs").exists() and not Path("/etc/x.png.json").exists()
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            real = Path(os.path.realpath(Path(dirpath) / name))
            assert real.is_relative_to(out.resolve()), real
            assert not name.startswith(".trtbatch-"), "temporary file left behind"

    files = written_files(out)
    by_index = {rec["index"]: name for name, rec in files.items()}
    assert report.root == out.resolve()
    assert report.written == len(files) == len(HOSTILE) - 1
    assert [(i, p) for i, p, _ in report.refused] == [(3, "link/z.png")]
    assert "symbolic link" in report.refused[0][2]
    assert by_index[0] == "etc/x.png.json"
    assert by_index[1] == "abs/y.png.json"
    assert by_index[2] == "a/b.png.json"
    assert by_index[4] == "nul_byte/ctrl_[31m.png.json"
    assert (by_index[5], by_index[6], by_index[7]) == ("x.png.json", "x.png~6.json", "x.png~7.json")
    assert by_index[8] == "image-8.json" and by_index[9] == "image-9.json"
    assert by_index[10].startswith("q" * 100) and by_index[10].endswith(".json") and "/" not in by_index[10]
    assert by_index[11] == "a.json"
    assert by_index[12] == "inside.png~12.json"  # a.json is a file: the image moves to the top of OUT
    assert {i for i, _, _ in report.renamed} == {6, 7, 12}
    for name, rec in files.items():  # each file holds its own image's record
        assert rec["path"] == HOSTILE[rec["index"]], name
        assert rec["ok"] == (rec["index"] % 5 != 4) and rec["job_id"] == JOB


def test_a_link_leaf_pointing_outside_is_not_written_through(store_client: Client, store_conn: redis.Redis,
                                                             tmp_path: Path) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("keep me")
    (out / "v.png.json").symlink_to(victim)
    (out / "dangling").symlink_to(tmp_path / "not-yet" / "there")
    make_job(store_conn, ["v.png", "dangling/d.png", "ok.png"])
    report = jobs.export_dir(store_client, JOB, out)
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "not-yet").exists()
    assert sorted(i for i, _, _ in report.refused) == [0, 1]
    assert report.written == 1 and sorted(written_files(out)) == ["ok.png.json"]
    assert os.readlink(out / "v.png.json") == str(victim)


def test_links_that_stay_inside_out_are_followed(store_client: Client, store_conn: redis.Redis,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "alias").symlink_to("real")
    make_job(store_conn, ["alias/w.png", "/data/alias/../real/w2.png"])
    report = jobs.export_dir(store_client, JOB, out)
    assert report.refused == [] and report.written == 2
    assert json.loads((out / "real" / "w.png.json").read_text())["index"] == 0
    assert json.loads((out / "data" / "alias" / "real" / "w2.png.json").read_text())["index"] == 1


def test_exporting_again_overwrites_the_same_files(store_client: Client, store_conn: redis.Redis,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "missing" / "out"  # created, parents too
    make_job(store_conn, ["d/x.png", "d/x.png", "y.png"])
    first = jobs.export_dir(store_client, JOB, out)
    names = sorted(written_files(out))
    second = jobs.export_dir(store_client, JOB, out)
    assert sorted(written_files(out)) == names == ["d/x.png.json", "d/x.png~1.json", "y.png.json"]
    assert first.written == second.written == 3 and first.refused == second.refused == []
    failed = jobs.export_dir(store_client, JOB, tmp_path / "failed", failed_only=True)
    assert failed.written == 0  # no failed image among indices 0-2


def test_out_that_is_a_file_or_a_dangling_link_is_refused(store_client: Client, store_conn: redis.Redis,
                                                           tmp_path: Path) -> None:
    from common.errors import InputError

    make_job(store_conn, ["x.png"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        jobs.export_dir(store_client, JOB, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="cannot create the folder"):
        jobs.export_dir(store_client, JOB, tmp_path / "dangling")
    assert not (tmp_path / "nowhere").exists()


# -- the command line --------------------------------------------------------------------------
def trtbatch(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(cwd), check=False)


def test_cli_dir_export(cli_env: dict[str, str], store_conn: redis.Redis, tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "link").symlink_to(elsewhere)
    make_job(store_conn, ["../../etc/x.png", "link/z.png", "b.png", "b.png"])
    res = trtbatch(cli_env, tmp_path, "results", JOB, "--dir", "out")
    assert res.returncode == 1, res.stderr  # one image refused
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert f"wrote 3 files under {out.resolve()}" in res.stderr
    assert "image 1 ('link/z.png') not written: a symbolic link in the way points outside the folder" in res.stderr
    assert "image 3 ('b.png') -> b.png~3.json" in res.stderr
    assert sorted(written_files(out)) == ["b.png.json", "b.png~3.json", "etc/x.png.json"]
    assert not list(elsewhere.iterdir())

    (out / "link").unlink()
    res = trtbatch(cli_env, tmp_path, "results", JOB, "--dir", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "link" / "z.png.json").read_text())["index"] == 1

    res = trtbatch(cli_env, tmp_path, "results", JOB, "--dir", str(out), "-f", "csv")
    assert res.returncode == 2 and "--dir writes one JSON file per image" in res.stderr


def test_cli_output_file_goes_exactly_where_pointed(cli_env: dict[str, str], store_conn: redis.Redis,
                                                    store_client: Client, tmp_path: Path) -> None:
    """``-o FILE`` writes FILE (relative to the working folder) and nothing else, atomically: a failed export
    leaves an existing FILE as it was and no temporary file behind."""
    make_job(store_conn, ["../../etc/x.png", "/abs/y.png", "b.png"])
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    res = trtbatch(cli_env, work, "results", JOB, "-o", "sub/../sub/res.jsonl")
    assert res.returncode == 0, res.stderr
    assert f"wrote 3 records to {work / 'sub' / 'res.jsonl'}" in res.stderr
    assert sorted(p.name for p in work.rglob("*")) == ["res.jsonl", "sub"]
    rows = [json.loads(line) for line in (work / "sub" / "res.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["../../etc/x.png", "/abs/y.png", "b.png"]

    existing = work / "sub" / "res.jsonl"
    existing.write_text("old\n")
    res = trtbatch(cli_env, work, "results", "20990101-000000-deadbeef", "-o", str(existing))
    assert res.returncode == 2 and "no job '20990101-000000-deadbeef'" in res.stderr
    assert existing.read_text() == "old\n"
    assert sorted(p.name for p in work.rglob("*")) == ["res.jsonl", "sub"]

    res = trtbatch(cli_env, work, "results", JOB, "-o", str(work / "nosuch" / "r.csv"), "-f", "csv")
    assert res.returncode == 2 and "output folder" in res.stderr and "does not exist" in res.stderr
    assert not (work / "nosuch").exists()


# -- names below the images' common folder ------------------------------------------------------------
@pytest.mark.parametrize(("paths", "root"), [
    (["/home/u/photos/a/b.jpg", "/home/u/photos/c.jpg"], "/home/u/photos"),
    (["/home/u/photos/a/b.jpg", "/home/u/photos/a/c.jpg"], "/home/u/photos/a"),
    (["/home//u/./photos/a.jpg", "/home/u/photos/b.jpg"], "/home/u/photos"),  # one folder, however written
    (["/home/u/photos/a.jpg", "/home/u/photosX/b.jpg"], "/home/u"),  # whole components, not characters
    (["shots/a.jpg", "shots/x/b.jpg"], "shots"),
    (["../../etc/x.png"], "../../etc"),
    (["/a/x.png", "a/y.png"], ""),  # absolute and relative: no common folder
    (["/a/x.png", "/b/y.png"], ""),
    (["x.png", "d/y.png"], ""),
    ([], ""),
])
def test_input_root(paths: list[str], root: str) -> None:
    assert jobs.input_root(paths) == root
    for path in paths:
        parts = jobs.safe_parts(jobs.below(path, root))
        assert parts and os.path.normpath(os.path.join("/out", *parts)).startswith("/out/")


def test_files_are_named_below_the_common_input_folder(store_client: Client, store_conn: redis.Redis,
                                                       tmp_path: Path) -> None:
    """/home/u/photos/a/b.jpg lands at OUT/a/b.jpg.json, not OUT/home/u/photos/a/b.jpg.json; the safety rules
    still hold for what lies below the root (``..`` there cannot climb out of OUT)."""
    paths = ["/home/u/photos/a/b.jpg", "/home/u/photos/c.jpg", "/home/u/photos/a/../../../../x.jpg",
             "/home/u/photos/d/e.jpg", "/home/u/photos/a/f.jpg"]
    out = tmp_path / "out"
    make_job(store_conn, paths)
    report = jobs.export_dir(store_client, JOB, out)
    assert report.input_root == "/home/u/photos"
    assert report.refused == [] and report.renamed == []
    files = written_files(out)
    assert sorted(files) == ["a/b.jpg.json", "a/f.jpg.json", "a/x.jpg.json", "c.jpg.json", "d/e.jpg.json"]
    assert files["a/x.jpg.json"]["path"] == paths[2]  # the record keeps the full path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    failed = jobs.export_dir(store_client, JOB, tmp_path / "failed", failed_only=True)  # image 4 failed
    assert failed.input_root == "/home/u/photos"  # the root of the whole job: the same names as a full export
    assert sorted(written_files(tmp_path / "failed")) == ["a/f.jpg.json"]


def test_cli_dir_export_prints_the_root(cli_env: dict[str, str], store_conn: redis.Redis, tmp_path: Path) -> None:
    make_job(store_conn, ["/home/u/photos/a/b.jpg", "/home/u/photos/c.jpg"])
    res = trtbatch(cli_env, tmp_path, "results", JOB, "--dir", "out")
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == f"wrote 2 files under {(tmp_path / 'out').resolve()}, named by image path below " \
                                 "/home/u/photos"
    assert sorted(written_files(tmp_path / "out")) == ["a/b.jpg.json", "c.jpg.json"]


def test_exported_files_get_the_usual_mode_not_mkstemps(store_client: Client, store_conn: redis.Redis,
                                                         tmp_path: Path) -> None:
    make_job(store_conn, ["a/1.png", "a/2.png"])
    old = os.umask(0o022)
    try:
        report = jobs.export_dir(store_client, JOB, tmp_path / "out")
        jobs.export_file(store_client, JOB, "csv", tmp_path / "r.csv")
    finally:
        os.umask(old)
    written = [*(tmp_path / "out").rglob("*.json"), tmp_path / "r.csv"]
    assert report.written == 2 and {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}
