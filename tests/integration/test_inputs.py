"""Bad and unusual inputs through the real system: each fails alone with a readable reason (or is
converted and served), the rest of the batch succeeds, and the worker lives on."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from common import keys
from common.config import Settings
from producer import jobs, submit
from producer.client import Client
from tests.helpers import RedisServer, image_bytes, running_worker, worker_env, write

pytestmark = pytest.mark.integration


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions (a decompression bomb): refused before any pixel decodes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 64)
    body += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90° clockwise' (orientation 6)."""
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), color) for color in ((250, 10, 10), (10, 10, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def private(tmp_path_factory, digits, session_dirs):
    """A private redis-server (unix socket and TCP) so these workers see only these jobs."""
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="tb-inputs-", dir="/tmp"))
    server = RedisServer(folder, port=port, extra=["--bind", "127.0.0.1", "--protected-mode", "no"]).start()
    env = {"TRTBATCH_REDIS_URL": f"redis://127.0.0.1:{port}/0", "TRTBATCH_MODEL_REPO": str(digits["repo"]),
           "TRTBATCH_CACHE_DIR": str(session_dirs["cache"]), "TRTBATCH_STATE_DIR": str(folder / "state")}
    yield server, env
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(env: dict[str, str], paths: list[Path], timeout_s: float = 180):
    client = Client(Settings.from_env(env))
    try:
        job_id = submit.submit(client, submit.SubmitOptions(paths=tuple(map(str, paths)), model="digits",
                                                            batch_size=8))
        final = jobs.wait(client, job_id, timeout_s=timeout_s)
        return final, {Path(r.path).name: r for r in client.store.iter_results(job_id)}
    finally:
        client.close()


def test_odd_inputs_each_handled_and_the_rest_served(private, digits, tmp_path):
    server, env = private
    good = sorted(digits["images"].glob("digit_00[0-1]*.png"))[:6]
    odd = {
        "bomb.png": png_header_only(100_000, 100_000),
        "tiny.png": image_bytes("RGB", (1, 1)),
        "exif.jpg": exif_rotated_jpeg(),
        "anim.gif": animated_gif(),
        "alpha.png": image_bytes("RGBA", (20, 20)),
        "gray16.png": image_bytes("I;16", (20, 20)),
        "cmyk.jpg": image_bytes("CMYK", (20, 20), "JPEG"),
        "palette.png": image_bytes("P", (20, 20)),
    }
    paths = list(good) + [write(tmp_path / name, data) for name, data in odd.items()]
    weird = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.png"  # not valid UTF-8
    with open(weird, "wb") as fh:
        fh.write(image_bytes("L", (8, 8)))
    (tmp_path / "folder.png").mkdir()  # named like an image: only a manifest can list it as one
    manifest = write(tmp_path / "extra.csv", b"path\nfolder.png\n")
    paths += [Path(os.fsdecode(weird)), manifest]
    log = tmp_path / "worker.log"
    with running_worker(server.client(), worker_env(env), "inputs-cpu", log, "--slots", "1") as proc:
        final, recs = run(env, paths)
        assert proc.poll() is None  # the worker lives on
    assert final.state == "done" and len(recs) == len(paths)
    assert not recs["bomb.png"].ok and "over the limit" in recs["bomb.png"].error
    assert not recs["folder.png"].ok and recs["folder.png"].error == "is a directory"
    for name in ["tiny.png", "exif.jpg", "anim.gif", "alpha.png", "gray16.png", "cmyk.jpg", "palette.png"]:
        assert recs[name].ok, recs[name]
    assert any("EXIF orientation 6" in n for n in recs["exif.jpg"].notes)
    assert any("animated: first of 2 frames" in n for n in recs["anim.gif"].notes)
    assert any("alpha" in n for n in recs["alpha.png"].notes)
    weird_rec = next(r for name, r in recs.items() if name.startswith("caf"))
    assert weird_rec.ok and "\ufffd" in weird_rec.path  # shown with replacement characters, still served
    assert all(recs[p.name].ok for p in good)


def test_strict_modes_refuse_converted_inputs(private, digits, tmp_path):
    server, env = private
    good = sorted(digits["images"].glob("digit_002*.png"))[:3]
    modes = {"alpha.png": ("RGBA", "PNG"), "gray16.png": ("I;16", "PNG"), "cmyk.jpg": ("CMYK", "JPEG"),
             "palette.png": ("P", "PNG")}
    paths = list(good) + [write(tmp_path / n, image_bytes(m, (20, 20), f)) for n, (m, f) in modes.items()]
    strict = worker_env(env, TRTBATCH_STRICT_IMAGE_MODES="1")
    with running_worker(server.client(), strict, "strict-cpu", tmp_path / "worker.log", "--slots", "1"):
        final, recs = run(env, paths)
    assert final.failed == len(modes) and final.done == len(good)
    for name, (mode, _) in modes.items():
        assert recs[name].error == f"image mode {mode} is not accepted (strict_image_modes is on)", recs[name]


WRITE_ONLY = Path("/proc/sys/vm/compact_memory")  # mode 0200: unreadable even for root


def unreadable_file(folder: Path) -> Path:
    """A file the producer cannot read: chmod 000 for ordinary users; for root (CI) a link to a
    write-only sysctl file, which refuses reads even to root."""
    target = folder / "secret.png"
    if os.geteuid() != 0:
        shutil.copy(next(iter(folder.glob("*.png"))), target)
        os.chmod(target, 0o000)
    elif WRITE_ONLY.exists():
        target.symlink_to(WRITE_ONLY)
    else:
        pytest.skip("running as root without a write-only /proc file to stand for an unreadable file")
    return target


def test_unreadable_file_is_a_per_image_error(private, digits, tmp_path):
    server, env = private
    for src in sorted(digits["images"].glob("digit_003*.png"))[:3]:
        shutil.copy(src, tmp_path / src.name)
    unreadable_file(tmp_path)
    with running_worker(server.client(), worker_env(env), "perm-cpu", tmp_path / "worker.log", "--slots", "1"):
        final, recs = run(env, [tmp_path])
    assert final.done == 3 and final.failed == 1
    assert recs["secret.png"].error == "permission denied" and recs["secret.png"].error_code == "bad_image"


def test_ctrl_c_while_the_producer_waits_for_room_stops_at_once_and_sends_nothing_more(private, digits):
    """No worker, room for one batch: the second round trip (of 2 batches: they start small) waits
    for room on the sending thread. A Ctrl-C in the producer then ends the submission at once, and
    what was waiting is never sent."""
    _, env = private
    client = Client(Settings.from_env({**env, "TRTBATCH_MAX_INFLIGHT_BATCHES": "1",
                                       "TRTBATCH_UNSERVABLE_GRACE_S": "3600"}))
    seen = []

    def on_batch(n: int) -> None:
        seen.append(n)
        if len(seen) == 4:  # round trips 1 (batch 0) and 2 (batches 1-2) have started: 2 is waiting by now
            raise KeyboardInterrupt
    opts = submit.SubmitOptions(paths=(str(digits["labels"]),), model="digits", batch_size=8)
    started = time.monotonic()
    job_id = "ctrl-c-while-waiting"
    try:
        with pytest.raises(KeyboardInterrupt):
            submit.submit(client, opts, on_batch=on_batch, job_id=job_id)
        assert time.monotonic() - started < 20
        record = client.store.record(job_id)
        assert submit.FIRST_ROUND_TRIP == 1
        assert record.n_enqueued == 8  # the first round trip only: one batch of 8
        assert len(list(client.conn.scan_iter(match=keys.payload(job_id, "*")))) == 1
    finally:
        client.close()
