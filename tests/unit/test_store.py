"""The job store contract (server/jobs/store.py), run against every implementation (SQLite, and PostgreSQL on a
real server the tests start): commit before accept, claim once under a lease (also from concurrent claimers),
guarded final transitions, lapsed leases back in the queue, quota and queue bound inside the insert, webhooks with
their job, history pages, retention bookkeeping, the engine lock, and (PostgreSQL) a server restart."""

from __future__ import annotations

import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.jobs.leases import owner_id
from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import Claim, JobStatus, JobStore, NewJob, Quota, Refusal, ReservationLost, new_task_id
from tests.postgres_server import PostgresServer

StoreFactory = Callable[..., JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Builds stores of one implementation on one fresh database (each call: another connection to it)."""
    made: list[JobStore] = []
    if request.param == "sqlite":
        def build(lease_s: float = 30.0) -> JobStore:
            made.append(SqliteJobStore(tmp_path / "jobs.sqlite3", lease_s=lease_s))
            return made[-1]
    else:
        from server.jobs.postgres import PostgresJobStore

        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.fresh_database(f"t_{secrets.token_hex(6)}")

        def build(lease_s: float = 30.0) -> JobStore:
            made.append(PostgresJobStore(url, lease_s=lease_s))
            return made[-1]
    yield build
    for s in made:
        s.close()


@pytest.fixture
def store(make_store: StoreFactory) -> JobStore:
    return make_store()


def _job(jid: str, request: dict | None = None, **kw: object) -> NewJob:
    return NewJob(jid, "m", "k", request if request is not None else {}, **kw)  # type: ignore[arg-type]


def test_create_is_visible_to_another_connection(make_store: StoreFactory) -> None:
    store, other = make_store(), make_store()
    jid = new_task_id()
    assert store.create(_job(jid, {"prompt": "p"}))
    assert other.get(jid).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert store.get(jid).request == {"prompt": "p"}  # type: ignore[union-attr]
    assert store.get("task_0_unknown") is None


def test_sqlite_wal_mode_and_full_sync(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", lease_s=30.0)
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


def test_an_expired_lease_is_requeued_and_the_old_holders_late_answer_is_discarded(make_store: StoreFactory) -> None:
    store = make_store(lease_s=0.2)
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


def test_a_job_retried_later_waits_its_delay_and_keeps_its_failures(store: JobStore) -> None:
    jid = new_task_id()
    store.create(_job(jid))
    claim = Claim.of(store.claim([jid], "w0")[0])
    failure = {"attempt": 1, "code": "input_missing", "message": "m", "at": 1.0}
    assert store.retry_later(claim, 0.4, failure) and not store.retry_later(claim, 0.4, failure)  # claim spent
    rec = store.get(jid)
    assert rec.status is JobStatus.PENDING and rec.retries == [failure] and rec.not_before  # type: ignore[union-attr]
    assert store.pending() == [] and store.claim([jid], "w0") == []  # not before its delay
    time.sleep(0.5)
    (again,) = store.claim([q.id for q in store.pending()], "w0")
    assert again.id == jid and again.attempts == 2 and again.not_before is None
    assert store.retry_later(Claim.of(again), 0.0, {**failure, "attempt": 2})
    assert [f["attempt"] for f in store.get(jid).retries] == [1, 2]  # type: ignore[union-attr]


def test_a_create_past_its_deadline_commits_nothing(store: JobStore) -> None:
    from server.faults import StoreBusy

    jid = new_task_id()
    with pytest.raises(StoreBusy):
        store.create(_job(jid), deadline=time.monotonic() - 1)
    assert store.get(jid) is None


def test_renewal_keeps_a_lease_and_reports_cancels(make_store: StoreFactory) -> None:
    store = make_store(lease_s=0.5)
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


STALE_S = 10.0


def test_idempotency_reservations(store: JobStore) -> None:
    assert store.reserve_idempotency_key("k", "sha", STALE_S) == (True, None, "sha")
    assert store.create(_job("j1"), idempotency_key="k")
    assert store.reserve_idempotency_key("k", "sha", STALE_S) == (False, "j1", "sha")
    # A bound key is never taken over, however old.
    assert store.reserve_idempotency_key("k", "sha", -1) == (False, "j1", "sha")
    assert store.reserve_idempotency_key("dead", "sha", STALE_S)[0]
    assert store.release_stale_reservations(older_than_s=-1) == 1  # the one never bound to a job
    assert store.reserve_idempotency_key("dead", "sha2", STALE_S)[0]


def test_a_reservation_left_by_a_dead_request_is_taken_over_and_a_key_makes_one_job(store: JobStore) -> None:
    assert store.reserve_idempotency_key("k", "sha", STALE_S)[0]
    # Still being accepted (fresh, then touched): the retry waits for it.
    assert store.reserve_idempotency_key("k", "sha", STALE_S) == (False, None, "sha")
    store.touch_idempotency_key("k")
    assert store.reserve_idempotency_key("k", "sha", STALE_S) == (False, None, "sha")
    # Not touched within the bound (here: a bound already passed): its request is gone, the retry takes the key.
    assert store.reserve_idempotency_key("k", "sha", -1) == (True, None, "sha")
    assert store.create(_job("retry"), idempotency_key="k")
    # The first request was only stalled and commits late: nothing is inserted, and the key keeps its one job.
    with pytest.raises(ReservationLost):
        store.create(_job("stalled"), idempotency_key="k")
    assert store.get("stalled") is None
    assert store.reserve_idempotency_key("k", "sha", STALE_S) == (False, "retry", "sha")


def test_concurrent_claimers_each_get_a_job_once(make_store: StoreFactory) -> None:
    """Four engines (own connections) racing for the same 40 jobs: every job claimed exactly once."""
    stores = [make_store() for _ in range(4)]
    ids = [f"c{i:02d}" for i in range(40)]
    for jid in ids:
        stores[0].create(_job(jid))
    got: list[list[str]] = [[] for _ in stores]

    def race(n: int) -> None:
        while True:
            queue = [j.id for j in stores[n].pending()][:3]
            if not queue:
                return
            got[n] += [r.id for r in stores[n].claim(queue, f"w{n}", owner=f"other-host/{n}/1/w{n}")]

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [j for g in got for j in g]
    assert sorted(claimed) == ids
    assert all(stores[0].get(j).attempts == 1 for j in ids)  # type: ignore[union-attr]


def test_history_pages_delete_and_retention_bookkeeping(store: JobStore) -> None:
    for i in range(5):
        store.create(_job(f"h{i}", owner="studio"))
        time.sleep(0.002)
    store.create(_job("other", owner=None))
    page = store.list_jobs("studio", 2)
    assert [r.id for r in page] == ["h4", "h3"]
    nxt = store.list_jobs("studio", 10, before=(page[-1].created_at, page[-1].id))
    assert [r.id for r in nxt] == ["h2", "h1", "h0"]
    assert [r.id for r in store.list_jobs(None, 10)] == ["other"]
    assert not store.delete("h0")  # not finished
    store.claim(["h0", "h1"], "w0")
    store.complete("h0", {"images": []})
    time.sleep(0.01)
    store.fail("h1", {"code": "x", "message": "m", "field": None})
    cutoff = time.time() + 1
    assert [r.id for r in store.expire_candidates(cutoff)] == ["h0", "h1"]
    store.mark_files_expired(["h0"])
    assert [r.id for r in store.expire_candidates(cutoff)] == ["h1"] and store.get("h0").files_expired  # type: ignore
    assert store.delete("h1") and store.get("h1") is None
    assert store.list_jobs("studio", 10, status=JobStatus.COMPLETED)[0].id == "h0"


def test_engine_lock_has_one_holder(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    first, second = a.engine_lock(), b.engine_lock()
    assert first.try_acquire() and first.held()
    if isinstance(a, SqliteJobStore):
        # One machine: every engine may run (leases keep them apart); the lock is always held.
        assert second.try_acquire()
        return
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire() and second.held()
    second.release()


def test_postgres_restart_costs_nothing_accepted(postgres_server: PostgresServer) -> None:
    from server.jobs.postgres import PostgresJobStore

    store = PostgresJobStore(postgres_server.fresh_database(f"t_{secrets.token_hex(6)}"), lease_s=30.0)
    lock = store.engine_lock()
    try:
        assert store.create(_job("before"))
        assert lock.try_acquire()
        postgres_server.stop()
        postgres_server.start()
        # The pool reconnects: reads and writes carry on, and the job accepted before the restart is there.
        assert store.get("before").status is JobStatus.PENDING  # type: ignore[union-attr]
        assert store.create(_job("after")) and [j.id for j in store.pending()] == ["before", "after"]
        # The engine lock's session ended with the restart: its holder learns it lost the lock, and can retake it.
        assert not lock.held() and lock.try_acquire()
    finally:
        lock.release()
        store.close()


def test_postgres_front_ends_starting_together_create_the_schema_once(postgres_server: PostgresServer) -> None:
    """Several front ends opening a fresh database at the same moment: every one starts (no catalog conflict)."""
    from server.jobs.postgres import PostgresJobStore

    url = postgres_server.fresh_database(f"t_{secrets.token_hex(6)}")
    gate = threading.Barrier(6)
    opened: list[JobStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        gate.wait()
        try:
            opened.append(PostgresJobStore(url))
        except BaseException as e:  # noqa: BLE001 - the test reports whatever broke
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert opened[0].create(_job("one")) and opened[-1].get("one") is not None
    finally:
        for s in opened:
            s.close()
