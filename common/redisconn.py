"""Redis connections for every process: the redis-py client and the matching Celery broker URL.

One place turns settings (URL, ACL user, password, TLS files) into both, so the producer, workers
and tests always talk to the same server the same way. Clients retry commands through short
outages (a Redis restart) with exponential backoff instead of failing the job.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from common.config import Settings
from common.errors import BrokerError, ConfigError

#: Command retries span ~30 s of outage: long enough for a Redis restart with an AOF reload.
_RETRY_ATTEMPTS = 40
_RETRY_ERRORS = [ConnectionError, TimeoutError, BusyLoadingError, ConnectionResetError]
#: redis-py also takes the password as a query argument.
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|pass|pwd)=)[^&#]*")
T = TypeVar("T")


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``; never log a password.

    Works on the raw text (no port or host parsing), so a malformed URL is redacted too, and a
    ``?password=`` query argument (which redis-py accepts) is masked as well."""
    parts = urlsplit(url)
    out = url
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        if ":" in userinfo:
            out = out.replace(f"//{parts.netloc}", f"//{userinfo.split(':', 1)[0]}:***@{host}", 1)
    return _SECRET_QUERY.sub(r"\1***", out)


def resolve_url(settings: Settings, start: bool = True) -> str:
    """The URL to use: ``redis_url`` if set, else the embedded server (started if ``start``)."""
    if settings.redis_url:
        scheme = urlsplit(settings.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"redis_url must start with redis://, rediss:// or unix://, "
                              f"got {redact_url(settings.redis_url)}")
        if scheme != "rediss" and _tls_paths(settings):
            raise ConfigError(f"TRTBATCH_REDIS_TLS_* files are set but {redact_url(settings.redis_url)} "
                              "is not a TLS URL; use rediss://")
        return settings.redis_url
    if _tls_paths(settings):
        raise ConfigError("TRTBATCH_REDIS_TLS_* files are set but TRTBATCH_REDIS_URL is not (the embedded "
                          "server does not use TLS); set a rediss:// URL")
    from common.embedded import EmbeddedRedis

    server = EmbeddedRedis(settings.state_dir)
    return server.ensure_running() if start else server.url


def _tls_paths(settings: Settings) -> dict[str, tuple[str, str]]:
    """The TLS files that are set: redis-py argument -> (variable, path)."""
    named = {"ssl_ca_certs": ("TRTBATCH_REDIS_TLS_CA_FILE", settings.redis_tls_ca_file),
             "ssl_certfile": ("TRTBATCH_REDIS_TLS_CERT_FILE", settings.redis_tls_cert_file),
             "ssl_keyfile": ("TRTBATCH_REDIS_TLS_KEY_FILE", settings.redis_tls_key_file)}
    return {arg: (env, path) for arg, (env, path) in named.items() if path}


def _tls_files(settings: Settings) -> dict[str, str]:
    """The TLS files that are set, by the redis-py argument they feed; each must be readable (else
    redis-py retries a missing file for ~30 s as if Redis were down)."""
    for env, path in _tls_paths(settings).values():
        if not os.access(path, os.R_OK) or not os.path.isfile(path):
            raise ConfigError(f"{env}={path}: no such readable file")
    return {arg: path for arg, (_, path) in _tls_paths(settings).items()}


def _tls_kwargs(settings: Settings) -> dict[str, Any]:
    return {"ssl_cert_reqs": "required", **_tls_files(settings)}


def permanent_error(exc: BaseException) -> bool:
    """An error no retry can fix: Redis refused our credentials, or TLS verification failed
    (ours of the server's certificate, or the server's alert about ours)."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (AuthenticationError, AuthorizationError, ssl.SSLCertVerificationError)):
            return True
        if isinstance(err, ssl.SSLError) and "ALERT" in str(getattr(err, "reason", "") or ""):
            return True
        err = err.__cause__ or err.__context__
    return False


class _Retry(Retry):
    """Retries through outages, but not through errors that retrying cannot fix (a wrong password
    would otherwise take ~30 s of retries to report)."""

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None, **kw: Any) -> T:
        def retryable(error: Exception) -> bool:
            return not permanent_error(error) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, is_retryable=retryable, **kw)


def client(settings: Settings, url: str | None = None, **extra: Any) -> redis.Redis:
    """A redis-py client (bytes in, bytes out) that retries through short outages."""
    url = url or resolve_url(settings)
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": 5,
        "health_check_interval": 15,
        "retry": _Retry(ExponentialBackoff(cap=1.0, base=0.05), _RETRY_ATTEMPTS),
        "retry_on_error": _RETRY_ERRORS,
    }
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    if url.startswith("rediss://"):
        kwargs.update(_tls_kwargs(settings))
    kwargs.update(extra)
    return redis.Redis.from_url(url, **kwargs)


def ping(conn: redis.Redis) -> None:
    try:
        conn.ping()
    except (AuthenticationError, AuthorizationError) as exc:
        raise BrokerError(f"Redis refused the credentials ({describe_auth(conn)}): {exc}") from exc
    except redis.RedisError as exc:
        if permanent_error(exc):  # TLS verification, either way
            raise BrokerError(f"TLS with Redis failed (check TRTBATCH_REDIS_TLS_CA_FILE, _CERT_FILE, _KEY_FILE): "
                              f"{exc}") from exc
        raise BrokerError(f"cannot reach Redis: {exc}") from exc


def describe_auth(conn: redis.Redis) -> str:
    """Which credentials a client sends, without the password."""
    kw = conn.connection_pool.connection_kwargs
    user, password = kw.get("username"), kw.get("password")
    if not password:
        return "no password given"
    return f"user {user!r} with a password" if user else "a password, no user name"


def broker_url(settings: Settings, url: str | None = None) -> str:
    """The kombu form of the same URL, credentials from settings folded in."""
    url = url or resolve_url(settings)
    parts = urlsplit(url)
    user = settings.redis_username or (unquote(parts.username) if parts.username else "")
    password = settings.redis_password or (unquote(parts.password) if parts.password else "")
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user or password else ""
    if parts.scheme == "unix":
        # redis-py reads the database of a socket URL from ?db=N, kombu from ?virtual_host=N
        pairs = [("virtual_host" if k == "db" else k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        query = f"?{urlencode(pairs)}" if pairs else ""
        return f"redis+socket://{auth}{parts.path}{query}"
    host = parts.hostname or "localhost"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=auth + netloc))


def broker_ssl(settings: Settings, url: str) -> dict[str, Any] | None:
    """``broker_use_ssl`` for Celery when the URL is ``rediss://``."""
    if not url.startswith("rediss://"):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, **{arg: path for arg, (_, path) in _tls_paths(settings).items()}}


def check_access(settings: Settings, url: str) -> None:
    """Fail at once (ConfigError) if Redis refuses our credentials or TLS; a server that is merely
    down passes, so a worker can start before Redis and wait for it."""
    conn = client(settings, url, retry=Retry(ExponentialBackoff(), 0), socket_timeout=10)
    try:
        conn.ping()
    except redis.RedisError as exc:
        if permanent_error(exc):
            what = "refused the credentials" if isinstance(exc, (AuthenticationError, AuthorizationError)) \
                else "TLS failed"
            raise ConfigError(f"Redis at {redact_url(url)}: {what} ({describe_auth(conn)}): {exc}") from exc
    finally:
        conn.close()
