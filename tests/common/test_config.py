"""Settings: defaults, environment parsing, the TOML file, precedence, validation and masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import Settings
from common.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.redis_url is None and s.redis_password is None
    assert s.uses_embedded_redis
    assert s.visibility_timeout_s == 10 and isinstance(s.visibility_timeout_s, int)
    assert s.lease_refresh_s == 2.0 and isinstance(s.lease_refresh_s, float)
    assert s.result_ttl_s == 7 * 24 * 3600
    assert s.strict_image_modes is False
    assert s.celery_accept_content == "json,msgpack"
    assert s.max_image_pixels == 50_000_000


def test_default_folders_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = Settings.from_env({})
    assert s.model_repo == tmp_path / "data" / "trtbatch" / "models"
    assert s.state_dir == tmp_path / "state" / "trtbatch"
    assert s.cache_dir == tmp_path / "cache" / "trtbatch"


def test_environment_values_get_their_field_types(tmp_path: Path) -> None:
    s = Settings.from_env({
        "TRTBATCH_REDIS_URL": "redis://h:6380/2",
        "TRTBATCH_VISIBILITY_TIMEOUT_S": "25",
        "TRTBATCH_LEASE_REFRESH_S": "0.5",
        "TRTBATCH_STRICT_IMAGE_MODES": "yes",
        "TRTBATCH_TASK_EVENTS": "on",
        "TRTBATCH_MODEL_REPO": str(tmp_path / "repo"),
        "TRTBATCH_CACHE_DIR": "~/somewhere",
        "TRTBATCH_REDIS_PASSWORD": "",
        "PATH": "/usr/bin",  # not ours: ignored
    })
    assert s.redis_url == "redis://h:6380/2" and not s.uses_embedded_redis
    assert s.visibility_timeout_s == 25 and type(s.visibility_timeout_s) is int
    assert s.lease_refresh_s == 0.5 and type(s.lease_refresh_s) is float
    assert s.strict_image_modes is True and s.task_events is True
    assert s.model_repo == tmp_path / "repo" and isinstance(s.model_repo, Path)
    assert s.cache_dir == Path.home() / "somewhere"
    assert s.redis_password is None  # optional string: '' means unset


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" True ", True),
    ("0", False), ("false", False), ("no", False), ("off", False), ("", False),
])
def test_boolean_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"TRTBATCH_STRICT_IMAGE_MODES": raw}).strict_image_modes is expected


@pytest.mark.parametrize(("var", "raw"), [
    ("TRTBATCH_PIPELINE_SLOTS", "two"),
    ("TRTBATCH_PIPELINE_SLOTS", "1.5"),
    ("TRTBATCH_LEASE_REFRESH_S", "fast"),
    ("TRTBATCH_STRICT_IMAGE_MODES", "maybe"),
])
def test_malformed_values_name_the_setting(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: raw})
    name = var.removeprefix("TRTBATCH_").lower()
    assert name in str(info.value) and repr(raw) in str(info.value)


@pytest.mark.parametrize(("var", "raw"), [
    ("TRTBATCH_PIPELINE_SLOTS", "-1"),
    ("TRTBATCH_RESULT_TTL_S", "-86400"),
    ("TRTBATCH_LEASE_REFRESH_S", "-0.5"),
])
def test_negative_numbers_are_rejected(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=">= 0"):
        Settings.from_env({var: raw})


def test_zero_is_allowed() -> None:
    assert Settings.from_env({"TRTBATCH_METRICS_PORT": "0"}).metrics_port == 0


def test_unknown_trtbatch_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown environment variable TRTBATCH_REDIS_URI"):
        Settings.from_env({"TRTBATCH_REDIS_URI": "redis://elsewhere"})


@pytest.mark.parametrize("var", ["TRTBATCH_MODEL", "TRTBATCH_DEVICE"])
def test_variables_read_by_the_command_line_are_not_unknown(var: str) -> None:
    """`trtbatch submit` reads TRTBATCH_MODEL and `trtbatch worker` TRTBATCH_DEVICE (click envvars);
    setting them must not make every command fail with "unknown environment variable"."""
    assert Settings.from_env({var: "digits"}) == Settings()


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "trtbatch.toml"
    path.write_text('redis_url = "redis://file:6379/0"\npipeline_slots = 3\nlease_refresh_s = 1.5\n'
                    'strict_image_modes = true\nmodel_repo = "/srv/models"\nresult_ttl_s = "120"\n')
    s = Settings.from_env({"TRTBATCH_CONFIG": str(path)})
    assert s.redis_url == "redis://file:6379/0"
    assert s.pipeline_slots == 3 and s.lease_refresh_s == 1.5 and s.strict_image_modes is True
    assert s.model_repo == Path("/srv/models")
    assert s.result_ttl_s == 120 and type(s.result_ttl_s) is int


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("pipeline_slots = 2\nredis_uri = 'redis://x'\nzzz = 1\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TRTBATCH_CONFIG": str(path)})
    assert "redis_uri" in str(info.value) and "zzz" in str(info.value) and str(path) in str(info.value)


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.from_env({"TRTBATCH_CONFIG": str(tmp_path / "nope.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("pipeline_slots = = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.from_env({"TRTBATCH_CONFIG": str(bad)})


def test_negative_number_in_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("heartbeat_ttl_s = -5\n")
    with pytest.raises(ConfigError, match="heartbeat_ttl_s"):
        Settings.from_env({"TRTBATCH_CONFIG": str(path)})


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("pipeline_slots = 3\nheartbeat_ttl_s = 30\nmax_inflight_batches = 7\n")
    env = {"TRTBATCH_CONFIG": str(path), "TRTBATCH_HEARTBEAT_TTL_S": "40", "TRTBATCH_MAX_INFLIGHT_BATCHES": "8"}
    s = Settings.from_env(env, max_inflight_batches="9", redis_url=None)
    assert s.pipeline_slots == 3  # file beats default
    assert s.heartbeat_ttl_s == 40  # environment beats file
    assert s.max_inflight_batches == 9  # explicit override beats environment
    assert s.redis_url is None  # a None override means "not given"
    assert s.payload_ttl_s == Settings().payload_ttl_s


def test_replace_coerces() -> None:
    s = Settings().replace(pipeline_slots="4", strict_image_modes="1")
    assert s.pipeline_slots == 4 and s.strict_image_modes is True
    with pytest.raises(ConfigError):
        Settings().replace(no_such_setting=1)


def test_public_dict_masks_secrets(tmp_path: Path) -> None:
    s = Settings.from_env({"TRTBATCH_REDIS_URL": "redis://alice:s3cr3t@redis.example:6380/3",
                           "TRTBATCH_REDIS_PASSWORD": "hunter2", "TRTBATCH_STATE_DIR": str(tmp_path)})
    out = s.public_dict()
    assert out["redis_password"] == "***"
    assert out["redis_url"] == "redis://alice:***@redis.example:6380/3"
    assert out["state_dir"] == str(tmp_path)
    text = json.dumps(out)  # plain values only
    assert "s3cr3t" not in text and "hunter2" not in text
    assert set(out) == set(Settings.__dataclass_fields__)


def test_public_dict_keeps_urls_without_password() -> None:
    out = Settings.from_env({"TRTBATCH_REDIS_URL": "redis://redis.example:6379/0"}).public_dict()
    assert out["redis_url"] == "redis://redis.example:6379/0"
    assert out["redis_password"] is None
    bare = Settings.from_env({"TRTBATCH_REDIS_URL": "redis://:only-pw@h:1/0"}).public_dict()
    assert "only-pw" not in bare["redis_url"] and bare["redis_url"].endswith("@h:1/0")
