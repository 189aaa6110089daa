"""Connection settings that protect secrets: URL redaction, TLS files that must match the URL, and which
connection errors are permanent (reported at once) rather than retried as an outage."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis

from common import redisconn
from common.config import Settings
from common.errors import ConfigError
from common.redisconn import permanent_error, redact_url, resolve_url


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
    ("rediss://:secret@redis.example/2", "rediss://:***@redis.example/2"),
    ("redis://:p%40ss%3Aw@host/0", "redis://:***@host/0"),
    ("redis://user:pa@ss@host/0", "redis://user:***@host/0"),  # an unquoted @ in the password
    ("rediss://:secret@[::1]:6380/0", "rediss://:***@[::1]:6380/0"),
    ("redis://:secret@host:notaport/0", "redis://:***@host:notaport/0"),  # malformed: still redacted, no error
    ("redis://host/0?password=secret&db=1", "redis://host/0?password=***&db=1"),
    ("unix:///run/redis.sock?db=1&password=secret", "unix:///run/redis.sock?db=1&password=***"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("redis://user@host/0", "redis://user@host/0"),
    ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "secret" not in redact_url(url)


def test_settings_never_show_the_password() -> None:
    s = Settings.from_env({"TRTBATCH_REDIS_URL": "redis://u:secret@h/0", "TRTBATCH_REDIS_PASSWORD": "secret2"})
    assert "secret" not in str(s.public_dict())


@pytest.mark.parametrize("url", ["redis://:secret@host:6379/0", "unix:///run/redis.sock", None])
def test_tls_files_without_a_tls_url_are_refused(url: str | None, tmp_path: Path) -> None:
    """Setting a CA but a plain URL would silently connect without TLS: refused, with the URL redacted."""
    env = {"TRTBATCH_REDIS_TLS_CA_FILE": "/etc/ssl/ca.pem", "TRTBATCH_STATE_DIR": str(tmp_path)}
    if url:
        env["TRTBATCH_REDIS_URL"] = url
    with pytest.raises(ConfigError, match="rediss://") as info:
        resolve_url(Settings.from_env(env))
    assert "secret" not in str(info.value)
    assert not (tmp_path / "redis").exists()  # the embedded server was not started


def test_missing_tls_file_is_a_config_error(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = Settings.from_env({"TRTBATCH_REDIS_URL": "rediss://localhost:1/0", "TRTBATCH_REDIS_TLS_CA_FILE": str(ca),
                                  "TRTBATCH_REDIS_TLS_KEY_FILE": str(tmp_path / "nosuch.key")})
    with pytest.raises(ConfigError, match=r"TRTBATCH_REDIS_TLS_KEY_FILE=.*nosuch.key: no such readable file"):
        redisconn.client(settings)


def chained(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904  # implicit chaining, as redis-py does
    except Exception as exc:
        return exc


def test_permanent_errors() -> None:
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    alert = ssl.SSLError(1, "tlsv13 alert certificate required")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert permanent_error(redis.AuthenticationError("invalid username-password pair"))
    assert permanent_error(chained(redis.ConnectionError("Error 1 connecting"), verify))
    assert permanent_error(chained(redis.ConnectionError("Error while reading"), alert))
    # an outage stays retryable: refused, reset, EOF in the middle of TLS, a server loading its data
    assert not permanent_error(chained(redis.ConnectionError("Error 111"), ConnectionRefusedError(111, "refused")))
    assert not permanent_error(chained(redis.ConnectionError("Error 104"), ConnectionResetError(104, "reset")))
    assert not permanent_error(chained(redis.ConnectionError("Error 8"), ssl.SSLEOFError(8, "EOF")))
    assert not permanent_error(redis.BusyLoadingError("LOADING"))
    assert not permanent_error(redis.TimeoutError("timeout"))
