"""Redis key builders: one prefix, one style, distinct keys, and a module docstring that documents them."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import pytest

from common import keys

BUILDERS: dict[str, Callable[..., str]] = {
    name: fn for name, fn in vars(keys).items()
    if inspect.isfunction(fn) and fn.__module__ == keys.__name__ and name != "job_keys"
    and not name.startswith("parse_")  # parsers read keys back (tested below), they build none
}
CONSTANTS = {"JOBS": keys.JOBS, "WORKERS": keys.WORKERS, "BROKER_UNACKED": keys.BROKER_UNACKED,
             "BROKER_UNACKED_INDEX": keys.BROKER_UNACKED_INDEX, "ORPHANS": keys.ORPHANS,
             "ORPHANS_LOCK": keys.ORPHANS_LOCK}


def _sample_args(fn: Callable[..., str], variant: int) -> list[object]:
    args: list[object] = []
    for param in inspect.signature(fn).parameters.values():
        args.append(3 + variant if param.annotation in ("int", int) else f"{param.name}{variant}")
    return args


def _all_keys(variant: int = 0) -> dict[str, str]:
    out = {name: fn(*_sample_args(fn, variant)) for name, fn in BUILDERS.items()}
    return out | CONSTANTS


def test_there_are_builders() -> None:
    assert {"job", "job_results", "payload", "blob", "blob_chunk", "version", "model_versions", "calib_table",
            "worker", "worker_slot", "worker_rate", "broker_queue"} <= set(BUILDERS)


@pytest.mark.parametrize("name", sorted(_all_keys()))
def test_prefix_and_style(name: str) -> None:
    key = _all_keys()[name]
    assert key.startswith("trtbatch:"), key
    assert "::" not in key and not key.endswith(":") and " " not in key, key


def test_builders_give_distinct_keys() -> None:
    first, second = _all_keys(0), _all_keys(1)
    assert len(set(first.values())) == len(first)  # no two builders share a key
    for name, fn in BUILDERS.items():
        params = list(inspect.signature(fn).parameters)
        assert first[name] != second[name], name
        # every argument is part of the key: changing any single one changes the key
        for i in range(len(params)):
            args = _sample_args(fn, 0)
            args[i] = _sample_args(fn, 1)[i]
            assert fn(*args) != first[name], (name, params[i])


def test_job_keys_covers_every_per_job_key() -> None:
    job_id = "20250101-000000-abcdef12"
    per_job = {fn(job_id) for name, fn in BUILDERS.items()
               if list(inspect.signature(fn).parameters) == ["job_id"]
               and fn(job_id).startswith(f"trtbatch:job:{job_id}")}
    assert per_job == {keys.job(job_id), keys.job_results(job_id), keys.job_errors(job_id),
                       keys.job_batches(job_id), keys.job_progress(job_id), keys.job_attempts(job_id),
                       keys.job_timings(job_id), keys.job_accuracy(job_id), keys.job_workers(job_id)}
    assert set(keys.job_keys(job_id)) == per_job
    assert len(keys.job_keys(job_id)) == len(per_job)
    assert keys.payload(job_id, 0) not in keys.job_keys(job_id)  # payloads expire on their own


def test_broker_keys() -> None:
    assert keys.BROKER_PREFIX == "trtbatch:celery:"
    assert keys.BROKER_UNACKED == "trtbatch:celery:unacked"
    assert keys.BROKER_UNACKED_INDEX == "trtbatch:celery:unacked_index"
    assert keys.broker_queue("trtbatch.trt.int8") == "trtbatch:celery:trtbatch.trt.int8"


def _documented_patterns() -> list[str]:
    doc = keys.__doc__ or ""
    # "  trtbatch:version:<version id>     HASH  ..." -> "trtbatch:version:<version id>"
    return re.findall(r"^\s+(trtbatch:.+?)\s{2,}[A-Z]+\b", doc, flags=re.MULTILINE)


def _pattern(documented: str) -> re.Pattern[str]:
    parts = re.split(r"<[^>]+>", documented)
    return re.compile("^" + "[^:]+".join(re.escape(p) for p in parts) + "$")


def test_docstring_documents_every_key() -> None:
    documented = _documented_patterns()
    assert len(documented) >= 20
    regexes = [_pattern(p) for p in documented]
    for name, key in _all_keys().items():
        assert any(r.match(key) for r in regexes), f"{name} -> {key} is not documented in common/keys.py"


def test_docstring_mentions_every_family_and_no_stale_one() -> None:
    def family(key: str) -> str:
        return key.split(":")[1]

    documented = {family(p) for p in _documented_patterns()}
    built = {family(k) for k in _all_keys().values()}
    assert built == documented


def test_parse_payload_reads_back_what_payload_builds() -> None:
    job_id = "20250101-000000-abcdef12"
    assert keys.parse_payload(keys.payload(job_id, 17)) == (job_id, 17)
    assert keys.parse_payload(keys.payload(job_id, 3).encode()) == (job_id, 3)
    assert keys.parse_payload(keys.eval_payload(job_id, 3)) is None  # evaluation images are no batch
    assert keys.parse_payload(keys.job(job_id)) is None
