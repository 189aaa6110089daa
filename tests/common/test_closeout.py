"""Ending a job early on a real redis-server: cancel and the unservable rule close out every sent image."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

from common import closeout, keys
from common.errors import JobCancelledError, JobError
from common.fleet import WorkerInfo
from common.schemas import BatchPayload, JobRecord, PayloadItem, ResultRecord
from common.store import JobStore

QUEUE = "trtbatch.paddle.cpu.fp32"


@pytest.fixture()
def store(store_conn: redis.Redis) -> JobStore:
    return JobStore(store_conn, 3600)


def sent_job(store: JobStore, n_images: int = 7, batch_size: int = 3, complete: bool = True) -> str:
    """A job whose producer sent ``n_images`` images in batches with real payloads (paths and labels)."""
    assert store.create_job(JobRecord(job_id="j", model="digits", version_id="v1", batch_size=batch_size,
                                      queue=QUEUE, engine="paddle"))
    n_batches = -(-n_images // batch_size)
    for b in range(n_batches):
        items = tuple(PayloadItem(index=i, path=f"img{i}.png", data=b"x", label=str(i % 2))
                      for i in range(b * batch_size, min((b + 1) * batch_size, n_images)))
        store.conn.set(keys.payload("j", b), BatchPayload(items).encode(), ex=60)
        store.note_enqueued("j", len(items), {"batches": b + 1, "images": items[-1].index + 1})
    if complete:
        store.mark_submitted("j", n_images, n_batches)
    return "j"


def served(store: JobStore, batch_no: int, indices: range) -> None:
    records = [ResultRecord(index=i, path=f"img{i}.png", ok=True, top_k=[{"label": "0", "score": 1.0}], job_id="j")
               for i in indices]
    store.write_batch("j", batch_no, records, keys.payload("j", batch_no))


def test_cancel_finishes_the_job_at_once_with_cancelled_records(store: JobStore) -> None:
    sent_job(store)
    served(store, 0, range(0, 3))
    assert closeout.cancel(store, "j") == "cancelled"
    st = store.status("j")
    assert (st.state, st.done, st.failed, st.cancelled, st.pending) == ("cancelled", 3, 0, 4, 0)
    assert st.terminal and st.job.finished_s and st.job.cancelled_s
    records = {r.index: r for r in store.iter_results("j")}
    assert len(records) == 7 and records[5].error_code == "cancelled" and records[5].path == "img5.png"
    assert records[5].label == "1"  # kept for `retry`
    assert not store.conn.exists(keys.payload("j", 1)) and not store.conn.exists(keys.payload("j", 2))
    served(store, 1, range(3, 6))  # a worker that was mid-batch: its late write changes nothing
    assert store.status("j").cancelled == 4 and store.status("j").done == 3
    assert store.conn.hgetall(keys.job_accuracy("j")) == {}  # cancelled images are not judged
    d = store.status("j", reasons=2).as_dict()
    assert d["images_per_s"] is not None and d["error_reasons_counted"] == 2  # a sample of the 4 cancelled


def test_a_job_cancelled_before_any_image_ran_has_no_rate(store: JobStore) -> None:
    sent_job(store)
    closeout.cancel(store, "j")
    d = store.status("j").as_dict()
    assert d["cancelled"] == 7 and d["images_per_s"] is None and d["error_reasons_counted"] == 7


def test_cancel_during_submission_then_the_producer_closes_out_what_it_sent_since(store: JobStore) -> None:
    sent_job(store, n_images=3, complete=False)
    assert closeout.cancel(store, "j") == "cancelled"
    assert store.status("j").cancelled == 3
    # the producer had a round trip in flight: batch 1 lands, it stops and reports what it sent
    store.conn.set(keys.payload("j", 1), BatchPayload((PayloadItem(index=3, path="img3.png"),)).encode())
    store.note_enqueued("j", 1, {"batches": 2, "images": 4})
    store.mark_submitted("j", 4, 2)
    closeout.end(store, "j", "cancelled", closeout.JobCancelledError("job cancelled"))
    st = store.status("j")
    assert (st.state, st.n_images, st.cancelled, st.pending) == ("cancelled", 4, 4, 0)


def test_closing_out_a_batch_whose_payload_expired_uses_its_index_range(store: JobStore) -> None:
    sent_job(store)
    store.conn.delete(keys.payload("j", 2))
    closeout.cancel(store, "j")
    assert sorted(r.index for r in store.iter_results("j")) == list(range(7))
    assert [r.path for r in store.iter_results("j")][6] == ""


def test_finished_and_unknown_jobs(store: JobStore) -> None:
    sent_job(store, n_images=3)
    served(store, 0, range(3))
    assert store.job_state("j") == "done"
    assert closeout.cancel(store, "j") == "done"  # a finished job stays finished
    with pytest.raises(JobError, match="no job 'nope'"):
        closeout.cancel(store, "nope")


def test_unservable_job_fails_after_the_grace_period_and_a_server_clears_the_clock(store: JobStore) -> None:
    sent_job(store)
    nobody: list[WorkerInfo] = []
    reason = closeout.check_servable(store, nobody, store.record("j"), grace_s=60, now=1000.0)
    assert reason and QUEUE in reason
    assert store.record("j").unservable_since == 1000.0
    server = WorkerInfo(name="cpu@a", queues=[QUEUE])
    assert closeout.check_servable(store, [server], store.record("j"), grace_s=60, now=1030.0) is None
    assert store.record("j").unservable_since is None  # a server appeared: the clock starts again
    closeout.check_servable(store, nobody, store.record("j"), grace_s=60, now=1040.0)
    closeout.check_servable(store, nobody, store.record("j"), grace_s=60, now=1099.0)
    assert store.job_state("j") == "queued"  # 59 s: still within the grace period
    closeout.check_servable(store, nobody, store.record("j"), grace_s=60, now=1100.0)
    st = store.status("j")
    assert (st.state, st.failed, st.pending) == ("failed", 7, 0)
    assert "no live worker can serve queue" in st.job.error and "unservable_grace_s = 60" in st.job.error
    assert {r.error_code for r in store.iter_results("j")} == {"unservable"}
    assert list(st.error_reasons.values()) == [7]


def test_other_job_kinds_and_finished_jobs_are_left_alone(store: JobStore) -> None:
    assert store.create_job(JobRecord(job_id="c", kind="calibration", queue=QUEUE))
    assert closeout.check_servable(store, [], store.record("c"), grace_s=0, now=1.0) is None
    assert store.record("c").unservable_since is None


def test_a_close_out_cut_short_is_finished_by_the_next_look(store: JobStore) -> None:
    """The state flips first; a close-out interrupted after it (Ctrl-C in `status`, or a worker sweep's
    per-tick bound) leaves pending images that the next status, wait or sweep records."""
    sent_job(store)
    assert closeout.end(store, "j", "cancelled", JobCancelledError("job cancelled"), max_batches=1) == 3
    st = store.status("j")
    assert (st.state, st.cancelled, st.pending) == ("cancelled", 3, 4)
    assert closeout.sweep_unservable(store, [], 120.0, max_batches=1) == []  # one more batch per sweep
    assert store.status("j").cancelled == 6
    assert closeout.finish_pending(store, store.record("j")) == 1
    st = store.status("j")
    assert (st.cancelled, st.pending) == (7, 0)
    assert closeout.finish_pending(store, store.record("j")) == 0  # nothing left: nothing done


def test_the_grace_runs_on_redis_clock_and_an_expired_job_is_not_recreated(store: JobStore) -> None:
    sent_job(store)
    redis_now = float(store.conn.time()[0])
    assert closeout.check_servable(store, [], store.record("j"), grace_s=120)  # no `now`: Redis's clock
    since = store.record("j").unservable_since
    assert since is not None and abs(since - redis_now) < 5
    store.conn.hset(keys.job("j"), "unservable_since", redis_now - 200)
    closeout.check_servable(store, [], store.record("j"), grace_s=120)
    assert store.record("j").state == "failed"
    gone = store.record("j")
    store.delete("j")
    closeout.check_servable(store, [], replace(gone, state="queued", unservable_since=None), grace_s=120)
    assert not store.conn.exists(keys.job("j"))  # no ghost hash holding only unservable_since
