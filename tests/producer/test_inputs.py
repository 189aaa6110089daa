"""What the user points at -> a deterministic stream of images (files, folders, globs, manifests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.errors import InputError
from producer.inputs import InputItem, check_inputs, display_path, iter_inputs, read_bytes


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def paths(specs: list[str | Path]) -> list[str]:
    return [item.path for item in iter_inputs([str(s) for s in specs])]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "shots"
    for rel in ("z.png", "a/1.JPG", "a/notes.txt", "a/sub/3.webp", "b/2.png", "b/2.tiff", "b/raw.dat",
                "a/sub/0.jpeg"):
        touch(root / rel)
    (root / "a" / "empty").mkdir()
    return root


def test_explicit_files_keep_any_extension(tmp_path: Path) -> None:
    scan = touch(tmp_path / "scan.dat")
    png = touch(tmp_path / "a.png")
    assert list(iter_inputs([str(scan), str(png)])) == [InputItem(str(scan)), InputItem(str(png))]


def test_directories_are_walked_recursively_in_sorted_order(tree: Path) -> None:
    expected = [tree / "z.png", tree / "a" / "1.JPG", tree / "a" / "sub" / "0.jpeg", tree / "a" / "sub" / "3.webp",
                tree / "b" / "2.png", tree / "b" / "2.tiff"]
    assert paths([tree]) == [str(p) for p in expected]
    assert paths([tree]) == paths([tree])  # deterministic, for --resume


def test_walk_order_does_not_depend_on_the_file_system(tmp_path: Path) -> None:
    names = ["m", "c", "x", "a", "q", "e", "k", "b", "z", "d"]
    for name in names:  # created in a scrambled order
        touch(tmp_path / "w" / name / f"{name}.png")
        touch(tmp_path / "w" / f"{name}.png")
    expected = [str(tmp_path / "w" / f"{n}.png") for n in sorted(names)]
    expected += [str(tmp_path / "w" / n / f"{n}.png") for n in sorted(names)]
    assert paths([tmp_path / "w"]) == expected


def test_directory_symlinks_are_not_followed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "o.png")
    (tree / "link").symlink_to(outside, target_is_directory=True)
    assert str(tree / "link" / "o.png") not in paths([tree])


def test_globs(tree: Path) -> None:
    assert paths([f"{tree}/**/*.png"]) == [str(tree / "b" / "2.png"), str(tree / "z.png")]
    assert paths([f"{tree}/b/2.*"]) == [str(tree / "b" / "2.png"), str(tree / "b" / "2.tiff")]
    assert paths([f"{tree}/?"]) == [str(tree / "a" / "1.JPG"), str(tree / "a" / "sub" / "0.jpeg"),
                                    str(tree / "a" / "sub" / "3.webp"), str(tree / "b" / "2.png"),
                                    str(tree / "b" / "2.tiff")]  # matched folders are walked
    assert paths([f"{tree}/*.gif"]) == []


def test_a_file_whose_name_looks_like_a_glob(tmp_path: Path) -> None:
    odd = touch(tmp_path / "photo [1].png")
    assert paths([odd]) == [str(odd)]
    check_inputs([str(odd)])  # it exists: not "no file matches"


def test_csv_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    absolute = touch(tmp_path / "elsewhere" / "abs.png")
    (folder).mkdir()
    (folder / "labels.csv").write_text(f"path,label,extra\nimgs/a.png,7,x\n{absolute},,y\nb.png,cat,z\n")
    items = list(iter_inputs([str(folder / "labels.csv")]))
    assert items == [InputItem(str(folder / "imgs" / "a.png"), "7"), InputItem(str(absolute), None),
                     InputItem(str(folder / "b.png"), "cat")]


def test_csv_manifest_is_relative_to_its_folder_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "list.CSV").write_text("path\nx.png\n")
    monkeypatch.chdir(tmp_path)
    assert paths(["m/list.CSV"]) == [os.path.join("m", "x.png")]


def test_jsonl_manifest(tmp_path: Path) -> None:
    lines = [json.dumps({"path": "a.png", "label": 3}), "", json.dumps({"path": "/abs/b.png"}),
             json.dumps({"path": "c.png", "label": ""})]
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    assert list(iter_inputs([str(tmp_path / "list.jsonl")])) == [
        InputItem(str(tmp_path / "a.png"), "3"), InputItem("/abs/b.png", None), InputItem(str(tmp_path / "c.png"))]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("no_path.csv", "file,label\na.png,1\n", "a CSV manifest needs a 'path' column"),
    ("empty.csv", "", "a CSV manifest needs a 'path' column"),
    ("blank_path.csv", "path,label\na.png,1\n,2\n", "blank_path.csv:3: row has no 'path'"),
    ("bad.jsonl", '{"path": "a.png"}\n{not json}\n', "bad.jsonl:2: not JSON"),
    ("list.jsonl", '["a.png"]\n', "list.jsonl:1: expected an object"),
    ("nopath.jsonl", '{"path": "a.png"}\n\n{"file": "b.png"}\n', "nopath.jsonl:3: row has no 'path'"),
])
def test_manifest_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as info:
        list(iter_inputs([str(tmp_path / name)]))
    assert message in str(info.value)


def test_check_inputs(tree: Path, tmp_path: Path) -> None:
    check_inputs([str(tree), str(tree / "z.png"), f"{tree}/**/*.png"])
    with pytest.raises(InputError, match=r"no such file or directory: .*missing\.png"):
        check_inputs([str(tree), str(tmp_path / "missing.png")])
    with pytest.raises(InputError, match=r"no file matches '.*\*\.gif'"):
        check_inputs([f"{tree}/*.gif"])
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    check_inputs([str(tmp_path / "dangling.png")])  # exists as a link: reported per image later


def test_read_bytes(tmp_path: Path) -> None:
    good = touch(tmp_path / "ok.png", b"\x89PNG data")
    assert read_bytes(str(good), 100) == (b"\x89PNG data", None)
    assert read_bytes(str(good), 9) == (b"\x89PNG data", None)  # exactly at the limit
    assert read_bytes(str(good), 8) == (None, "file is 9 bytes, over the 8-byte limit")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    assert read_bytes(str(tmp_path / "dangling.png"), 100) == (None, "broken symbolic link")
    assert read_bytes(str(tmp_path / "missing.png"), 100) == (None, "file not found")
    (tmp_path / "folder.png").mkdir()
    assert read_bytes(str(tmp_path / "folder.png"), 1 << 20) == (None, "is a directory")


WRITE_ONLY = Path("/proc/sys/vm/compact_memory")  # mode 0200: unreadable even for root


def test_read_bytes_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        secret = touch(tmp_path / "secret.png")
        secret.chmod(0)
    elif WRITE_ONLY.exists():  # root reads any regular file; a write-only sysctl file refuses even root
        secret = tmp_path / "secret.png"
        secret.symlink_to(WRITE_ONLY)
    else:
        pytest.skip("running as root without a write-only /proc file to stand for an unreadable file")
    assert read_bytes(str(secret), 100) == (None, "permission denied")


def test_non_utf8_file_name(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path / "imgs")
    os.mkdir(folder)
    raw = os.path.join(folder, b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"data")
    (item,) = iter_inputs([str(tmp_path / "imgs")])
    assert item.path == os.fsdecode(raw)  # the real name, with surrogate escapes
    assert read_bytes(item.path, 100) == (b"data", None)
    shown = item.display
    assert shown.encode("utf-8").decode("utf-8") == shown  # printable, valid UTF-8
    assert shown.endswith("caf\ufffd.png")
    assert display_path(str(tmp_path / "plain é.png")) == str(tmp_path / "plain é.png")


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("latin1.csv", b"path,label\n\xe9t\xe9.png,1\n", "not UTF-8 text"),
    ("number.jsonl", b'{"path": 5}\n', "'path' must be a string, not 5"),
])
def test_a_broken_manifest_is_one_input_error(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        check_inputs([str(manifest)])


def test_a_nul_byte_in_a_path_is_a_reason_not_a_crash() -> None:
    assert read_bytes("a\x00b.png", 1000) == (None, "the path contains a NUL byte")
