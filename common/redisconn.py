"""Redis connections for every process: the redis-py client and the matching Celery broker URL.

One place turns settings (URL, ACL user, password, TLS files) into both, so the producer, workers
and tests always talk to the same server the same way. Clients retry commands through short
outages (a Redis restart) with exponential backoff instead of failing the job.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from common.config import Settings
from common.errors import BrokerError, ConfigError

#: Command retries span ~30 s of outage: long enough for a Redis restart with an AOF reload.
_RETRY_ATTEMPTS = 40
_RETRY_ERRORS = [ConnectionError, TimeoutError, BusyLoadingError, ConnectionResetError]


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``; never log a password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def resolve_url(settings: Settings, start: bool = True) -> str:
    """The URL to use: ``redis_url`` if set, else the embedded server (started if ``start``)."""
    if settings.redis_url:
        scheme = urlsplit(settings.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"redis_url must start with redis://, rediss:// or unix://, "
                              f"got {redact_url(settings.redis_url)}")
        return settings.redis_url
    from common.embedded import EmbeddedRedis

    server = EmbeddedRedis(settings.state_dir)
    return server.ensure_running() if start else server.url


def _tls_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if settings.redis_tls_ca_file:
        kwargs["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        kwargs["ssl_certfile"] = settings.redis_tls_cert_file
    if settings.redis_tls_key_file:
        kwargs["ssl_keyfile"] = settings.redis_tls_key_file
    return kwargs


def client(settings: Settings, url: str | None = None, **extra: Any) -> redis.Redis:
    """A redis-py client (bytes in, bytes out) that retries through short outages."""
    url = url or resolve_url(settings)
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": 5,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), _RETRY_ATTEMPTS),
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
    except redis.RedisError as exc:
        raise BrokerError(f"cannot reach Redis: {exc}") from exc


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
    out: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file:
        out["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        out["ssl_certfile"] = settings.redis_tls_cert_file
    if settings.redis_tls_key_file:
        out["ssl_keyfile"] = settings.redis_tls_key_file
    return out
