"""The SQLite job store: commit before accept, claim once, results, failures, recovery."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server.jobs.store import JobStatus, JobStore, new_task_id


def _store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def test_create_is_visible_to_another_connection(tmp_path: Path) -> None:
    store = _store(tmp_path)
    jid = new_task_id()
    store.create(jid, "m", "k", {"prompt": "p"})
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as other:
        (status,) = other.execute("SELECT status FROM jobs WHERE id = ?", (jid,)).fetchone()
    assert status == "pending"
    assert store.get(jid).request == {"prompt": "p"}  # type: ignore[union-attr]
    assert store.get("task_0_unknown") is None


def test_wal_mode(tmp_path: Path) -> None:
    _store(tmp_path)
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claim_is_exclusive_and_ordered(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ids = [new_task_id() + str(i) for i in range(3)]
    for jid in ids:
        store.create(jid, "m", "k", {})
    assert [j.id for j in store.pending()] == ids
    assert store.queue_position(ids[2]) == 2
    first = store.claim(ids[:2], "w0")
    assert [j.status for j in first] == [JobStatus.PROCESSING] * 2
    assert store.claim(ids[:2], "w1") == []  # already taken
    assert store.queue_position(ids[0]) is None
    assert store.queue_position(ids[2]) == 0


def test_complete_and_fail(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a, b = new_task_id() + "a", new_task_id() + "b"
    store.create(a, "m", "k", {})
    store.create(b, "m", "k", {})
    store.claim([a, b], "w0")
    store.set_progress(a, 3, 4)
    store.complete(a, {"images": [1]})
    store.fail(b, {"code": "generation_failed", "message": "m", "field": None})
    ra, rb = store.get(a), store.get(b)
    assert ra is not None and ra.status is JobStatus.COMPLETED and ra.result == {"images": [1]}
    assert (ra.progress_step, ra.progress_total) == (3, 4) and ra.finished_at is not None
    assert rb is not None and rb.status is JobStatus.FAILED and rb.error is not None
    assert store.counts() == {"completed": 1, "failed": 1}


def test_interrupted_jobs_are_requeued_on_reopen(tmp_path: Path) -> None:
    store = _store(tmp_path)
    jid = new_task_id()
    store.create(jid, "m", "k", {})
    store.claim([jid], "w0")
    store.close()  # the process "dies" mid-job
    reopened = _store(tmp_path)
    assert reopened.requeue_interrupted() == 1
    rec = reopened.get(jid)
    assert rec is not None and rec.status is JobStatus.PENDING and rec.attempts == 1
    assert [j.id for j in reopened.pending()] == [jid]
