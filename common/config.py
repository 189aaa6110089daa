"""Typed settings, read from ``TRTBATCH_*`` environment variables and an optional TOML file.

Precedence: built-in defaults < the file named by ``TRTBATCH_CONFIG`` < environment variables.
An unknown key in the file, or an unknown ``TRTBATCH_*`` variable, is an error rather than
silently ignored, so a typo (``TRTBATCH_REDIS_URI``) cannot leave a node on the wrong Redis.
Units are part of the names (``_s`` seconds, ``_mb`` megabytes, ``_pixels``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "TRTBATCH_"
CONFIG_ENV = "TRTBATCH_CONFIG"
#: ``TRTBATCH_*`` variables that are not settings: the config file, and the command line's own
#: defaults (``submit --model``, ``worker --device``, read by click).
NON_SETTING_ENV = frozenset({CONFIG_ENV, "TRTBATCH_MODEL", "TRTBATCH_DEVICE"})


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var) or str(Path.home() / fallback)
    return Path(base) / "trtbatch"


@dataclass(frozen=True)
class Settings:
    """Every tunable of trtbatch. Field ``foo_bar`` is read from ``TRTBATCH_FOO_BAR``."""

    # Redis. Unset ``redis_url`` means: use the embedded server in ``state_dir``.
    redis_url: str | None = None
    redis_username: str | None = None
    redis_password: str | None = None
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_socket_timeout_s: float = 30.0

    # Where things live on this machine.
    model_repo: Path = field(default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "models")
    state_dir: Path = field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state"))
    cache_dir: Path = field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"))

    # Result store.
    result_ttl_s: int = 7 * 24 * 3600
    payload_ttl_s: int = 24 * 3600

    # Delivery guarantees (see workers/process/lease.py): a batch held by a live worker has its lease
    # renewed every ``lease_refresh_s``; one not renewed for ``visibility_timeout_s`` is handed
    # to another worker. The timeout bounds recovery time, not task length.
    visibility_timeout_s: int = 10
    lease_refresh_s: float = 2.0
    restore_interval_s: int = 1
    task_max_retries: int = 3
    max_deliveries: int = 8
    retry_backoff_s: float = 2.0
    task_hard_time_limit_s: int = 3600
    #: Batches a worker holds per slot (Celery's prefetch multiplier): 1 = only the running ones, so a
    #: slot that finishes waits for the broker to deliver its next batch; 2 = one waits beside each
    #: running batch. Held batches are leased (workers/process/lease.py), and kept from other workers.
    prefetch_multiplier: int = 1

    # Workers.
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: int = 10
    pipeline_slots: int = 2
    overlap_decode: str = "auto"
    pool_start_method: str = "auto"
    #: How a worker runs its slots: processes (a prefork pool; each slot owns its cores and has Celery's
    #: hard time limit) or threads (one process, one CUDA context and GPU decoder for all slots; a
    #: watchdog enforces the time limit). auto = processes (see workers/process/main.py: thread_slots)
    slot_pool: str = "auto"
    gpu_selftest: str = "enforce"
    #: GPU workers: decode JPEGs on the GPU (nvImageCodec + CuPy) for engines that take device batches:
    #: auto (when the libraries load), on (refuse to start without them), off (always Pillow)
    gpu_decode: str = "auto"
    #: ONNX Runtime's CUDA EP on a stream of each predictor's own ("own") or on its default streams ("default")
    gpu_engine_stream: str = "default"
    #: GPU decode with thread slots: the GPU decoders a worker process keeps for its slots (at most one
    #: per slot); a batch decodes on whichever is free. Process slots have one each. H200, ResNet50 FP16,
    #: 4 thread slots: 1 decoder 6,405 img/s, 2: 6,796, 3: 6,048 (docs/gpu-verification.md).
    gpu_decoders: int = 2
    #: Thread slots: Python's GIL switch interval in the worker process (Python's own is 5 ms). A slot
    #: whose batch is next on the GPU waits for the GIL at most this long while another slot runs
    #: Python. H200, ResNet50 FP16, 4 thread slots, one run each on one machine: steady 8,590 img/s at
    #: 1 ms, 8,250 at 0.5, 7,872 at 5 (with py-spy attached; 7,930 without, on another machine).
    gil_switch_interval_ms: float = 1.0
    #: nvImageCodec's JPEG backend on GPU workers: "hybrid" (Huffman decoding on the worker's CPU threads,
    #: the rest on the GPU) or "hardware" (the GPU's JPEG engine, NVJPG, first; hybrid where it refuses).
    #: H200, ResNet50 FP16: a batch waits 13 ms beside inference with hybrid, 29 with hardware; end to end
    #: 5.7-6.6k against ~3.2k img/s. Hardware is closer to Pillow (max pixel difference 1 against 3).
    gpu_jpeg_backend: str = "hybrid"
    decode_threads: int = 0
    cpu_threads: int = 0
    gpu_memory_pool_mb: int = 1024
    metrics_port: int = 0
    #: A pipeline slot idle this long frees what its Paddle predictors keep from the last batch and
    #: hands free heap back to the OS (workers/process/memory.py); 0 = never. ResNet50 on CPU: 3.5 GB
    #: after a batch of 256 -> 0.3 GB; the next batch rebuilds the native predictor (0.3 s).
    idle_release_s: float = 30.0
    #: A slot idle this long drops its predictors altogether, whatever the engine (rebuilt by the
    #: next batch: under a second on CPU, a TensorRT engine from its cache); 0 = never.
    predictor_idle_evict_s: float = 600.0

    # Images.
    max_image_pixels: int = 50_000_000
    max_file_bytes: int = 64 * 1024 * 1024
    strict_image_modes: bool = False

    # Producer.
    max_inflight_batches: int = 64
    default_batch_size: int = 16
    #: a job that no live worker can serve for this long fails its images with that reason (the
    #: wait covers a worker restart or a node still starting; the job says so at once regardless)
    unservable_grace_s: float = 120.0

    celery_accept_content: str = "json,msgpack"
    task_events: bool = False
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), a config file, and overrides."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        path = env.get(CONFIG_ENV)
        if path:
            values.update(_read_file(Path(path)))
        values.update(_read_env(env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**_coerce_all(values))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **_coerce_all(changes))

    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values with secrets masked, safe to print or log."""
        from common.redisconn import redact_url

        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_password" and value:
                value = "***"
            elif f.name == "redis_url" and value:
                value = redact_url(value)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _field_types() -> dict[str, Any]:
    hints = get_type_hints(Settings)
    return {f.name: hints[f.name] for f in fields(Settings)}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} (from {CONFIG_ENV}) does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    known = _field_types()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    return data


def _read_env(env: dict[str, str]) -> dict[str, Any]:
    known = _field_types()
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key in NON_SETTING_ENV:
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in known:
            raise ConfigError(f"unknown environment variable {key}")
        values[name] = raw
    return values


def _coerce_all(values: dict[str, Any]) -> dict[str, Any]:
    types = _field_types()
    out = {}
    for name, value in values.items():
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        out[name] = _coerce(name, types[name], value)
    return out


def _coerce(name: str, typ: Any, value: Any) -> Any:
    """Turn a string or TOML value into the field's type, with a readable error."""
    args = [a for a in get_args(typ) if a is not type(None)]
    optional = bool(args)
    base = args[0] if args else typ
    if value is None or (optional and value == ""):
        return None
    try:
        if base is Path:
            return Path(value).expanduser()
        if base is bool:
            return _to_bool(value)
        if base in (int, float):
            result = base(value)
            if result < 0:
                raise ValueError("must be >= 0")
            return result
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}={value!r}: {exc}") from exc


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected a boolean (1/0, true/false, yes/no)")
