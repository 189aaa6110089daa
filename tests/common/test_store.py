"""The result store on a real redis-server: idempotent writes, job completion, queries, expiry."""

from __future__ import annotations

import time

import pytest
import redis

from common import keys
from common.errors import JobError
from common.schemas import JobRecord, ResultRecord
from common.store import JobStore

TTL = 3600


@pytest.fixture()
def store(store_conn: redis.Redis) -> JobStore:
    return JobStore(store_conn, TTL)


def rec(index: int, ok: bool = True, error: str = "corrupt or truncated PNG") -> ResultRecord:
    if ok:
        return ResultRecord(index=index, path=f"img{index}.png", ok=True,
                            top_k=[{"label": "1", "index": 1, "score": 0.9}], job_id="j")
    return ResultRecord(index=index, path=f"img{index}.png", ok=False, error=error, error_code="bad_image",
                        job_id="j")


def new_job(store: JobStore, job_id: str = "j", **meta: object) -> str:
    fields = {"model": "digits", "batch_size": 3, "top_k": 5, "queue": "trtbatch.any.fp32", "int8_source": None,
              **meta}
    assert store.create_job(JobRecord(job_id=job_id, **fields))  # type: ignore[arg-type]
    return job_id


def payload(store: JobStore, job_id: str, batch_no: int) -> str:
    key = keys.payload(job_id, batch_no)
    store.conn.set(key, b"claim-check", ex=60)
    return key


def snapshot(conn: redis.Redis, job_id: str) -> dict[str, object]:
    meta = conn.hgetall(keys.job(job_id))
    meta.pop(b"updated_s", None)
    return {"meta": meta, "results": conn.hgetall(keys.job_results(job_id)),
            "errors": conn.hgetall(keys.job_errors(job_id)), "batches": conn.hgetall(keys.job_batches(job_id))}


def test_create_job_is_idempotent(store: JobStore) -> None:
    new_job(store, "j", model="digits")
    first = store.meta("j")
    assert first["state"] == "submitting" and first["model"] == "digits" and first["batch_size"] == 3
    assert first["done"] == 0 and first["failed"] == 0 and first["submit_complete"] is False
    assert first["int8_source"] is None and not store.conn.hexists(keys.job("j"), "int8_source")  # None: not stored
    assert store.create_job(JobRecord(job_id="j", model="other")) is False
    assert store.meta("j") == first
    assert 0 < store.conn.ttl(keys.job("j")) <= TTL
    assert store.conn.zscore(keys.JOBS, "j") == pytest.approx(first["created_s"])


def test_write_batch(store: JobStore) -> None:
    new_job(store)
    key = payload(store, "j", 0)
    records = [rec(0), rec(1, ok=False), rec(2)]
    assert store.write_batch("j", 0, records, key) == (2, 1)
    conn = store.conn
    assert not conn.exists(key)  # the claim-check payload is gone once written
    stored = conn.hgetall(keys.job_results("j"))
    assert {int(k): ResultRecord.decode(v) for k, v in stored.items()} == {r.index: r for r in records}
    assert list(conn.hgetall(keys.job_errors("j"))) == [b"1"]
    assert ResultRecord.decode(conn.hget(keys.job_errors("j"), "1")) == records[1]
    assert conn.hgetall(keys.job_batches("j")) == {b"0": b"done"}
    meta = store.meta("j")
    assert (meta["done"], meta["failed"], meta["batches_done"], meta["batches_dead"]) == (2, 1, 1, 0)
    for k in (keys.job_results("j"), keys.job_errors("j"), keys.job_batches("j")):
        assert 0 < conn.ttl(k) <= TTL, k


def test_redelivered_batch_changes_nothing(store: JobStore) -> None:
    new_job(store)
    store.write_batch("j", 0, [rec(0), rec(1, ok=False), rec(2)], payload(store, "j", 0))
    before = snapshot(store.conn, "j")
    # The second delivery decoded differently (image 1 fine, image 0 failed): the first write wins.
    key = payload(store, "j", 0)
    assert store.write_batch("j", 0, [rec(0, ok=False), rec(1), rec(2)], key) == (0, 0)
    assert store.write_batch("j", 0, [rec(0), rec(1, ok=False), rec(2)], key) == (0, 0)
    assert snapshot(store.conn, "j") == before
    assert not store.conn.exists(key)


def test_the_workers_that_wrote_a_jobs_records_are_counted_once_per_image(store: JobStore) -> None:
    """``job_workers``: worker -> images it recorded (ok or failed); a redelivered batch a second worker
    writes again adds nothing; records of no worker (the producer's cancellations) are not counted."""
    from dataclasses import replace

    new_job(store, batch_size=2)

    def by(worker: str, *records: ResultRecord) -> list[ResultRecord]:
        return [replace(r, worker=worker) for r in records]
    store.write_batch("j", 0, by("gpu0@a", rec(0), rec(1, ok=False)), payload(store, "j", 0))
    store.write_batch("j", 0, by("gpu1@b", rec(0), rec(1)), payload(store, "j", 0))  # a redelivery
    store.write_batch("j", 1, by("gpu1@b", rec(2)), payload(store, "j", 1))
    store.write_batch("j", 2, [rec(3)], payload(store, "j", 2))
    assert store.conn.hgetall(keys.job_workers("j")) == {b"gpu0@a": b"2", b"gpu1@b": b"1"}
    assert 0 < store.conn.ttl(keys.job_workers("j")) <= TTL
    from types import SimpleNamespace

    from producer.jobs import served_images

    store.write_batch("j", 3, by("cpu@c", rec(4), rec(5)), payload(store, "j", 3))
    assert list(served_images(SimpleNamespace(conn=store.conn), "j").items()) == [  # busiest first, then by name
        ("cpu@c", 2), ("gpu0@a", 2), ("gpu1@b", 1)]


def test_dead_and_failed_batch_states(store: JobStore) -> None:
    new_job(store)
    store.write_batch("j", 0, [rec(0, ok=False)], payload(store, "j", 0), batch_state="dead:worker lost 8 times")
    store.write_batch("j", 1, [rec(1, ok=False)], payload(store, "j", 1), batch_state="failed:precision_unsupported")
    meta = store.meta("j")
    assert meta["batches_dead"] == 1 and meta["batches_done"] == 1 and meta["failed"] == 2
    assert store.conn.hget(keys.job_batches("j"), "0") == b"dead:worker lost 8 times"


def test_job_finishes_when_submitted_before_the_last_batch(store: JobStore) -> None:
    new_job(store)
    assert store.record("j").submitted_s is None
    before = time.time()
    assert store.mark_submitted("j", 5, 2) == "queued"  # all sent, nothing finished
    assert before <= store.record("j").submitted_s <= time.time()  # when the producer was done
    store.write_batch("j", 0, [rec(0), rec(1), rec(2)], payload(store, "j", 0))
    assert store.job_state("j") == "running"
    meta = store.meta("j")
    assert meta["submit_complete"] is True and meta["finished_s"] is None
    assert not store.conn.hexists(keys.job("j"), "finished_s")
    store.write_batch("j", 1, [rec(3), rec(4, ok=False)], payload(store, "j", 1))
    meta = store.meta("j")
    assert meta["state"] == "done" and meta["finished_s"] >= meta["created_s"]
    assert store.status("j").terminal


def test_job_finishes_when_submitted_after_the_last_batch(store: JobStore) -> None:
    new_job(store)
    store.write_batch("j", 0, [rec(0), rec(1), rec(2)], payload(store, "j", 0))
    store.write_batch("j", 1, [rec(3), rec(4)], payload(store, "j", 1))
    assert store.job_state("j") == "running"  # the producer has not said it is done sending
    assert store.mark_submitted("j", 5, 2) == "done"
    assert store.meta("j")["finished_s"] > 0


def test_job_where_no_image_succeeded_fails(store: JobStore) -> None:
    new_job(store)
    store.write_batch("j", 0, [rec(0, ok=False), rec(1, ok=False)], payload(store, "j", 0))
    assert store.mark_submitted("j", 2, 1) == "failed"
    assert store.status("j").terminal


def test_accuracy_counts_new_labelled_records_once(store: JobStore) -> None:
    new_job(store)
    hit = ResultRecord(index=0, path="a", ok=True, label="1", top_k=[{"label": "1", "score": 0.9}], job_id="j")
    miss = ResultRecord(index=1, path="b", ok=True, label="2", top_k=[{"label": "1", "score": 0.6}], job_id="j")
    broken = ResultRecord(index=2, path="c", ok=False, label="2", error="bad", error_code="bad_image", job_id="j")
    unlabelled = rec(3)
    for _ in range(2):  # a batch delivered twice counts once
        store.write_batch("j", 0, [hit, miss, broken, unlabelled], payload(store, "j", 0))
    assert store.conn.hgetall(keys.job_accuracy("j")) == {b"n:1": b"1", b"c:1": b"1", b"n:2": b"2", b"f:2": b"1"}


def test_empty_job_is_done_at_once(store: JobStore) -> None:
    new_job(store)
    assert store.mark_submitted("j", 0, 0) == "done"


def test_mark_submitted_on_an_unknown_job(store: JobStore) -> None:
    """A job that expired or was deleted while the producer was still sending must not be recreated
    as a half-empty hash without state or TTL."""
    with pytest.raises(JobError):
        store.mark_submitted("gone", 3, 1)
    assert not store.conn.exists(keys.job("gone"))


def test_note_enqueued_on_an_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobError):
        store.note_enqueued("gone", 3, {"batches": 1, "images": 3})
    assert not store.conn.exists(keys.job("gone")) and not store.conn.exists(keys.job_progress("gone"))


def test_note_enqueued(store: JobStore) -> None:
    new_job(store)
    store.note_enqueued("j", 3, {"batches": 1, "images": 3})
    store.note_enqueued("j", 2, {"batches": 2, "images": 5})
    assert store.meta("j")["n_enqueued"] == 5
    assert store.progress("j") == {"batches": 2, "images": 5}
    assert 0 < store.conn.ttl(keys.job_progress("j")) <= TTL


def test_status_while_submitting_and_after(store: JobStore) -> None:
    new_job(store)
    store.note_enqueued("j", 3, {"batches": 1, "images": 3})
    store.write_batch("j", 0, [rec(0), rec(1, ok=False), rec(2, ok=False, error="empty file (0 bytes)")],
                      payload(store, "j", 0))
    store.note_enqueued("j", 3, {"batches": 2, "images": 6})
    assert store.progress("j") == {"batches": 2, "images": 6}
    st = store.status("j")
    assert (st.state, st.n_images, st.done, st.failed, st.pending, st.submit_complete) == ("running", 6, 1, 2, 3,
                                                                                           False)
    assert not st.terminal
    assert st.error_reasons == {"corrupt or truncated PNG": 1, "empty file (0 bytes)": 1}
    store.mark_submitted("j", 7, 3)
    st = store.status("j")
    assert st.n_images == 7 and st.pending == 4 and st.finished == 3
    d = st.as_dict()
    assert d["job_id"] == "j" and d["state"] == "running" and d["pending"] == 4 and d["model"] == "digits"
    assert d["elapsed_s"] >= 0 and d["images_per_s"] > 0
    assert store.status("j", reasons=1).error_reasons in ({"corrupt or truncated PNG": 1},
                                                          {"empty file (0 bytes)": 1})


def test_error_reasons_most_common_first(store: JobStore) -> None:
    new_job(store)
    records = [rec(i, ok=False, error="rare" if i == 0 else "common") for i in range(4)]
    store.write_batch("j", 0, records, payload(store, "j", 0))
    assert list(store.status("j").error_reasons.items()) == [("common", 3), ("rare", 1)]


def test_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobError, match="no job 'x' \\(unknown id, or its results expired\\)"):
        store.status("x")
    assert store.job_state("x") is None
    assert store.progress("x") is None


def test_iter_results_in_index_order_with_chunking(store: JobStore) -> None:
    new_job(store)
    batches = {b: [rec(i, ok=i % 4 != 1) for i in range(b * 3, min(b * 3 + 3, 10))] for b in range(4)}
    for b in (2, 0, 3, 1):  # batches finish in any order
        store.write_batch("j", b, batches[b], payload(store, "j", b))
    store.mark_submitted("j", 10, 4)
    for chunk in (1, 3, 4, 1000):
        assert [r.index for r in store.iter_results("j", chunk=chunk)] == list(range(10))
    assert [r.index for r in store.iter_results("j", chunk=2, failed_only=True)] == [1, 5, 9]
    assert all(not r.ok for r in store.iter_results("j", failed_only=True))


def test_iter_results_skips_missing_indices_and_covers_enqueued_while_submitting(store: JobStore) -> None:
    new_job(store)
    store.note_enqueued("j", 6, {"batches": 2, "images": 6})
    store.write_batch("j", 1, [rec(3), rec(4), rec(5)], payload(store, "j", 1))
    assert [r.index for r in store.iter_results("j", chunk=2)] == [3, 4, 5]


def test_list_jobs_newest_first_and_prunes_expired(store: JobStore) -> None:
    for job_id in ("a", "b", "c"):
        new_job(store, job_id)
        time.sleep(0.002)
    assert [j.job_id for j in store.list_jobs()] == ["c", "b", "a"]
    assert [j.job_id for j in store.list_jobs(limit=2)] == ["c", "b"]
    store.conn.delete(keys.job("b"))  # what its TTL does
    assert [j.job_id for j in store.list_jobs()] == ["c", "a"]
    assert store.conn.zrange(keys.JOBS, 0, -1) == [b"a", b"c"]


def test_deleted_job(store: JobStore) -> None:
    new_job(store)
    store.write_batch("j", 0, [rec(0)], payload(store, "j", 0))
    store.note_enqueued("j", 1, {"batches": 1, "images": 1})
    store.delete("j")
    assert not any(store.conn.exists(k) for k in keys.job_keys("j"))
    assert store.conn.zscore(keys.JOBS, "j") is None
    key = payload(store, "j", 1)
    with pytest.raises(JobError, match="job j no longer exists"):
        store.write_batch("j", 1, [rec(1)], key)
    assert not any(store.conn.exists(k) for k in keys.job_keys("j"))  # nothing half-written


def test_a_task_job_cancelled_during_its_upload_stays_cancelled(store: JobStore) -> None:
    from common import closeout

    assert store.create_job(JobRecord(job_id="c", kind="calibration", model="digits"))
    assert store.mark_task_queued("c", n_images=20, n_batches=2) == "queued"
    assert store.create_job(JobRecord(job_id="d", kind="calibration", model="digits"))
    assert closeout.cancel(store, "d") == "cancelled"
    assert store.mark_task_queued("d", n_images=20, n_batches=2) == "cancelled"  # the upload ended after
    assert store.record("d").state == "cancelled" and store.record("d").n_images == 20


def test_delete_removes_the_payloads_it_still_holds(store: JobStore) -> None:
    assert store.create_job(JobRecord(job_id="c", kind="calibration", model="digits", batch_size=4))
    for b in range(3):
        store.conn.set(keys.payload("c", b), b"x")
    for b in range(2):
        store.conn.set(keys.eval_payload("c", b), b"x")
    store.conn.set(keys.payload("other", 0), b"x")
    store.mark_task_queued("c", n_images=12, n_batches=3, eval_images=7)
    store.delete("c")
    assert store.conn.keys(f"{keys.PREFIX}:payload:*") == [keys.payload("other", 0).encode()]
