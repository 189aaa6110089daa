"""The batch runner and its retry policy, called directly in this process: real Redis, real Paddle.

The integration tests drive the same code through Celery worker subprocesses; these pin down each
branch of ``run_batch`` (served, duplicate, job gone, cancelled, payload race / expiry, too many
deliveries) and of the task policy (permanent -> failed at once, other -> retry, then dead letter).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from common import keys
from common.errors import (
    DeadLetterError,
    DecodeError,
    JobCancelledError,
    ModelError,
    PayloadMissingError,
    PayloadRaceError,
)
from common.schemas import BatchTimings, PipelineMode, ResultRecord, SlotState
from tests.workers.pipeline.conftest import new_job, put_batch
from workers.pipeline import tasks
from workers.pipeline.batch import run_batch
from workers.pipeline.context import SlotContext
from workers.pipeline.results import fail_batch


def digit_files(digits, n: int) -> list[Path]:
    return sorted(digits["images"].glob("digit_00*.png"))[:n]


def records(slot: SlotContext, job_id: str) -> dict[int, ResultRecord]:
    return {int(k): ResultRecord.decode(v) for k, v in slot.conn.hgetall(keys.job_results(job_id)).items()}


def test_a_batch_is_served_and_written_once(slot: SlotContext, digits_version: str, digits) -> None:
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, [*digit_files(digits, 3), b"not an image"], start=0)
    outcome = run_batch(slot, task)
    assert (outcome.ok, outcome.failed, outcome.skipped) == (3, 1, "")
    assert outcome.infer_s > 0 and outcome.decode_s > 0
    got = records(slot, job.job_id)
    assert sorted(got) == [0, 1, 2, 3]
    assert all(got[i].ok and len(got[i].top_k) == 3 and got[i].worker == "unit@test" for i in range(3))
    assert not got[3].ok and got[3].error_code == "bad_image" and "not an image" in got[3].error
    assert not slot.conn.exists(task.payload_key)  # the claim-check is consumed with the write
    timings = BatchTimings.decode(slot.conn.hget(keys.job_timings(job.job_id), 0))
    assert timings.mode is PipelineMode.PARTITIONED
    assert timings.started_s <= timings.fetched_s <= timings.decode_start_s <= timings.decode_end_s \
        <= timings.infer_start_s <= timings.infer_end_s <= timings.postprocessed_s
    state = SlotState.decode(slot.conn.hgetall(keys.worker_slot("unit@test", 0)))
    assert state.current_batch is None and state.batches == 1 and state.predictors[0]["runs"] == 1
    # delivered again (a lapsed lease, `submit --resume`): nothing changes, the predictor does not run
    put_batch(slot.conn, job, 0, digit_files(digits, 4))
    assert run_batch(slot, task).skipped == "already written"
    assert records(slot, job.job_id) == got and not slot.conn.exists(task.payload_key)
    assert slot.store.record(job.job_id).done == 3
    assert SlotState.decode(slot.conn.hgetall(keys.worker_slot("unit@test", 0))).predictors[0]["runs"] == 1


def test_outputs_match_the_reference_predictor(slot: SlotContext, digits_version: str, digits) -> None:
    from common.imaging import Preprocessor
    from common.manifest import ModelManifest
    from workers.engines.selftest import reference_outputs

    files = digit_files(digits, 8)
    job = new_job(slot.store, digits_version)
    run_batch(slot, put_batch(slot.conn, job, 0, files, include_outputs=True))
    manifest = ModelManifest.load(digits["repo"] / "digits")
    pre = Preprocessor(manifest.preprocess, manifest.input.chw, 10**8)
    expected = reference_outputs(digits["repo"] / "digits", np.stack([pre(f.read_bytes()).array for f in files]))
    by_index = records(slot, job.job_id)
    got = np.array([next(iter(by_index[i].outputs.values())) for i in sorted(by_index)], np.float32)
    assert float(np.abs(got - expected).max()) <= 1e-5


def test_job_gone_drops_the_batch(slot: SlotContext, digits_version: str, digits) -> None:
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, digit_files(digits, 2))
    slot.store.delete(job.job_id)
    assert run_batch(slot, task).skipped == "job gone"
    assert not slot.conn.exists(keys.job_results(job.job_id))


def cancelled_before_close_out(slot: SlotContext, job_id: str) -> None:
    """A job cancelled whose close-out has not covered this batch (a producer's round trip in flight
    sent it after `cancel` closed out the rest): the worker itself must fail it as cancelled."""
    slot.conn.hset(keys.job(job_id), "state", "cancelled")


def test_cancelled_job_is_a_permanent_error(slot: SlotContext, digits_version: str, digits) -> None:
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, digit_files(digits, 2))
    cancelled_before_close_out(slot, job.job_id)
    with pytest.raises(JobCancelledError):
        run_batch(slot, task)


def test_missing_payload_is_a_race_while_young_and_expired_when_old(slot: SlotContext, digits_version: str,
                                                                     digits) -> None:
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, digit_files(digits, 2))
    slot.conn.delete(task.payload_key)
    with pytest.raises(PayloadRaceError, match="is not in Redis"):
        run_batch(slot, task)
    slot.conn.hset(keys.job(job.job_id), "created_s", time.time() - slot.settings.payload_ttl_s - 1)
    with pytest.raises(PayloadMissingError, match="expired"):
        run_batch(slot, task)


def test_too_many_deliveries_dead_letter_with_the_last_error(slot: SlotContext, digits_version: str, digits) -> None:
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, digit_files(digits, 2))
    slot.conn.hset(keys.job_attempts(job.job_id), mapping={"0": slot.settings.max_deliveries})
    with pytest.raises(DeadLetterError, match=rf"delivered {slot.settings.max_deliveries} times without finishing"
                                              r".*the worker process died"):
        run_batch(slot, task)


def test_undecodable_payload_raises_decode_error(slot: SlotContext, digits_version: str) -> None:
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, [b"x"])
    slot.conn.set(task.payload_key, b"\xc1 garbage")
    with pytest.raises(DecodeError):
        run_batch(slot, task)


def test_a_broken_model_fails_the_batch_build(slot: SlotContext, digits_version: str, digits) -> None:
    job = new_job(slot.store, "vnot-published")
    with pytest.raises(ModelError, match="not published"):
        run_batch(slot, put_batch(slot.conn, job, 0, digit_files(digits, 1)))


@pytest.mark.parametrize(("error", "state"), [
    (JobCancelledError("job cancelled"), "failed:cancelled"),
    (DeadLetterError("dead-lettered after 3 retries: BrokerError: down"), "dead:dead-lettered after 3 retries: "
                                                                           "BrokerError: down"),
])
def test_fail_batch_writes_one_failed_record_per_image(slot: SlotContext, digits_version: str, digits, error,
                                                       state: str) -> None:
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 2, digit_files(digits, 3), start=8)
    outcome = fail_batch(slot, task, error)
    assert (outcome.ok, outcome.failed) == (0, 3)
    got = records(slot, job.job_id)
    assert sorted(got) == [8, 9, 10]
    assert all(not r.ok and r.error == str(error) and r.error_code == error.code and r.path for r in got.values())
    assert slot.conn.hget(keys.job_batches(job.job_id), 2).decode() == state
    assert slot.store.record(job.job_id).batches_dead == (1 if state.startswith("dead") else 0)
    assert fail_batch(slot, task, error).failed == 0  # idempotent


class _Request:
    def __init__(self, retries: int) -> None:
        self.retries = retries


class PolicyProbe:
    """Stands in for the bound Celery task only to record what the policy asks of it (``retry``)."""

    def __init__(self, retries: int) -> None:
        self.request = _Request(retries)
        self.retried: list[float] = []

    def retry(self, exc: Exception, countdown: float, max_retries: int) -> Exception:
        self.retried.append(countdown)
        return RuntimeError("retry requested")


def test_policy_fails_permanent_errors_at_once(slot: SlotContext, digits_version: str, digits, monkeypatch) -> None:
    from workers.pipeline import context

    monkeypatch.setattr(context, "_CONFIGURED", {"ctx": slot})
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, digit_files(digits, 2))
    cancelled_before_close_out(slot, job.job_id)
    probe = PolicyProbe(retries=0)
    assert tasks.infer(probe, task.encode())["failed"] == 2
    assert probe.retried == []
    assert {r.error_code for r in records(slot, job.job_id).values()} == {"cancelled"}


def test_policy_retries_with_backoff_then_dead_letters(slot: SlotContext, digits_version: str, monkeypatch) -> None:
    from workers.pipeline import context

    monkeypatch.setattr(context, "_CONFIGURED", {"ctx": slot})
    job = new_job(slot.store, digits_version)
    task = put_batch(slot.conn, job, 0, [b"x", b"y"])
    slot.conn.set(task.payload_key, b"\xc1 garbage")  # a DecodeError: not known to be permanent
    backoff = slot.settings.retry_backoff_s
    for n in range(slot.settings.task_max_retries):
        probe = PolicyProbe(retries=n)
        with pytest.raises(RuntimeError, match="retry requested"):
            tasks.infer(probe, task.encode())
        assert probe.retried == [backoff * 2 ** n]
        assert not slot.conn.exists(keys.job_results(job.job_id))
    last = PolicyProbe(retries=slot.settings.task_max_retries)
    assert tasks.infer(last, task.encode())["failed"] == 2 and last.retried == []
    got = records(slot, job.job_id)
    assert all(r.error_code == "dead_letter" and "after 3 retries: DecodeError" in r.error for r in got.values())
    assert slot.store.record(job.job_id).batches_dead == 1
