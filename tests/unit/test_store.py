"""The job store contract (server/jobs/store.py), run against every implementation: commit before accept, claim
once under a lease, guarded final transitions, lapsed leases back in the queue, quota and queue bound inside
the insert, webhooks with their job."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest

from server.jobs.leases import owner_id
from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import Claim, JobStatus, JobStore, NewJob, Quota, Refusal, new_task_id


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return SqliteJobStore(tmp_path / "jobs.sqlite3", lease_s=30.0)


def _job(jid: str, request: dict | None = None, **kw: object) -> NewJob:
    return NewJob(jid, "m", "k", request if request is not None else {}, **kw)  # type: ignore[arg-type]


def test_create_is_visible_to_another_connection(tmp_path: Path, store: JobStore) -> None:
    jid = new_task_id()
    assert store.create(_job(jid, {"prompt": "p"}))
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as other:
        (status,) = other.execute("SELECT status FROM jobs WHERE id = ?", (jid,)).fetchone()
    assert status == "pending"
    assert store.get(jid).request == {"prompt": "p"}  # type: ignore[union-attr]
    assert store.get("task_0_unknown") is None


def test_wal_mode_and_full_sync(tmp_path: Path, store: JobStore) -> None:
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = store._conn  # type: ignore[attr-defined]
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: an accepted job survives a power cut


def test_claim_is_exclusive_and_ordered(store: JobStore) -> None:
    ids = [new_task_id() + str(i) for i in range(3)]
    for jid in ids:
        store.create(_job(jid))
    assert [j.id for j in store.pending()] == ids
    assert store.queue_position(ids[2]) == 2
    first = store.claim(ids[:2], "w0")
    assert [j.status for j in first] == [JobStatus.PROCESSING] * 2
    assert all(j.lease_owner == owner_id("w0") and j.lease_expires > time.time() for j in first)
    assert store.claim(ids[:2], "w1") == []  # already taken
    assert store.queue_position(ids[0]) is None
    assert store.queue_position(ids[2]) == 0


def test_complete_and_fail(store: JobStore) -> None:
    a, b = new_task_id() + "a", new_task_id() + "b"
    store.create(_job(a))
    store.create(_job(b))
    store.claim([a, b], "w0")
    store.set_progress(a, 3, 4)
    store.complete(a, {"images": [1]})
    store.fail(b, {"code": "generation_failed", "message": "m", "field": None})
    ra, rb = store.get(a), store.get(b)
    assert ra is not None and ra.status is JobStatus.COMPLETED and ra.result == {"images": [1]}
    assert (ra.progress_step, ra.progress_total) == (3, 4) and ra.finished_at is not None
    assert rb is not None and rb.status is JobStatus.FAILED and rb.error is not None
    assert store.counts() == {"completed": 1, "failed": 1}


def test_an_expired_lease_is_requeued_and_the_old_holders_late_answer_is_discarded(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", lease_s=0.2)
    jid = new_task_id()
    store.create(_job(jid))
    (first,) = store.claim([jid], "w0", owner="other-host/123/456/w0")  # a holder this machine cannot see
    old = Claim.of(first)
    assert store.requeue_expired() == []  # still within its lease
    time.sleep(0.3)  # the holder stopped renewing
    assert store.requeue_expired() == [jid]
    rec = store.get(jid)
    assert rec.status is JobStatus.PENDING and rec.lease_owner is None and rec.attempts == 1  # type: ignore[union-attr]
    (second,) = store.claim([jid], "w1", owner="other-host/789/1/w1")
    new = Claim.of(second)
    assert store.renew([old]) == set() and not store.complete(jid, {"images": ["late"]}, old)
    assert store.complete(jid, {"images": ["kept"]}, new)
    done = store.get(jid)
    assert done.result == {"images": ["kept"]} and done.finishes == 1 and done.attempts == 2  # type: ignore[union-attr]


def test_renewal_keeps_a_lease_and_reports_cancels(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", lease_s=0.5)
    jid = new_task_id()
    store.create(_job(jid))
    claim = Claim.of(store.claim([jid], "w0", owner="other-host/1/2/w0")[0])
    for _ in range(4):
        time.sleep(0.2)
        assert store.renew([claim]) == set()
    assert store.requeue_expired() == []  # renewed past its original expiry
    assert store.request_cancel(jid)
    assert store.renew([claim]) == {jid}


def test_a_holder_known_dead_on_this_machine_lapses_at_once(store: JobStore) -> None:
    """After a kill -9 the restarted server need not wait for the lease: the holder's pid is gone."""
    jid = new_task_id()
    store.create(_job(jid))
    dead = f"{socket.gethostname()}/999999999/1/w0"
    store.claim([jid], "w0", owner=dead)
    assert store.requeue_expired() == [jid]


def test_queue_bound_and_quota_are_checked_inside_the_insert(store: JobStore) -> None:
    for i in range(2):
        assert store.create(_job(f"q{i}", owner="studio"), max_active=2, quota=Quota(3))
    full = store.create(_job("q2", owner="studio"), max_active=2)
    assert not full and full.refused is Refusal.QUEUE_FULL and store.get("q2") is None
    store.claim(["q0"], "w0")
    store.complete("q0", {})
    assert store.create(_job("q3", owner="studio"), max_active=2, quota=Quota(3))
    over = store.create(_job("q4", owner="studio"), max_active=10, quota=Quota(3))
    assert over.refused is Refusal.QUOTA_EXCEEDED and 86000 < over.retry_after_s <= 86400
    assert store.create(_job("q5", owner="other"), max_active=10, quota=Quota(3))  # per key


def test_a_webhook_and_a_dialect_note_are_stored_with_their_job(store: JobStore) -> None:
    hook = {"url": "http://h/x", "dialect": "darkroom", "base": "b", "events": ["completed"], "secret": "s",
            "attempts": [], "delivered": []}
    store.create(_job("w", webhook=hook, dialect={"replicate_model": "a/b"}))
    rec = store.get("w")
    assert rec.webhook == hook and rec.dialect == {"replicate_model": "a/b"}  # type: ignore[union-attr]
    store.claim(["w"], "w0")
    store.complete("w", {})
    assert store.owed_webhooks() == ["w"]
    store.add_webhook_attempt("w", {"status_code": 200}, delivered="completed")
    assert store.owed_webhooks() == []


def test_idempotency_reservations(store: JobStore) -> None:
    assert store.reserve_idempotency_key("k", "sha") == (True, None, "sha")
    assert store.create(_job("j1"), idempotency_key="k")
    assert store.reserve_idempotency_key("k", "sha") == (False, "j1", "sha")
    assert store.reserve_idempotency_key("dead", "sha")[0]
    assert store.release_stale_reservations(older_than_s=-1) == 1  # the one never bound to a job
    assert store.reserve_idempotency_key("dead", "sha2")[0]
