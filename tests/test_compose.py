"""docker-compose.yml is valid and says what the design needs (checked with `docker-compose config`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.helpers import REPO_ROOT

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (apt install docker-compose)")


def config(password: str | None = "s3cret-pw", *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTBATCH_")}
    if password is not None:
        env["TRTBATCH_REDIS_PASSWORD"] = password
    return subprocess.run([COMPOSE, "-f", str(REPO_ROOT / "docker-compose.yml"), *extra, "config"], env=env,
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


def rendered() -> dict:
    import yaml

    out = config("s3cret-pw", "--profile", "gpu")
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid_and_complete():
    doc = rendered()
    text = json.dumps(doc)
    services = doc["services"]
    assert {"redis", "worker-cpu", "worker-gpu", "flower"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"]) if isinstance(services["redis"]["command"], list) \
        else services["redis"]["command"]
    assert "--appendonly yes" in redis_cmd and "--requirepass" in redis_cmd
    assert services["worker-cpu"]["environment"]["TRTBATCH_REDIS_PASSWORD"] == "s3cret-pw"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker-gpu"]["command"][:3] == ["worker", "--device", "gpu:all"]
    assert services["worker-cpu"]["stop_signal"] == "SIGTERM"
    assert "flower" in " ".join(services["flower"]["entrypoint"])
    # Flower has no login: published on this host only (compose v1 renders "ip:host:container", v2 a mapping)
    hosts = [p.split(":")[0] if isinstance(p, str) else p.get("host_ip") for p in services["flower"]["ports"]]
    assert hosts == ["127.0.0.1"]
    assert "ports" not in services["redis"]  # Redis is reached on the compose network only
    assert "pickle" not in text


def test_compose_refuses_to_start_without_a_password():
    out = config(None)
    assert out.returncode != 0
    assert "TRTBATCH_REDIS_PASSWORD" in out.stderr
