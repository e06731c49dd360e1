"""Nothing around a render stops the engine: an input gone between accept and claim, a job store that fails once
or for longer than a lease, progress writes that fail, a full disk while outputs are stored, a worker thread that
dies anyway. Each case ends with the next job rendering on the same worker (the same thread, unless it died).

Time is scaled down (leases of 2 s, backoffs of 0.05 s) but every case keeps its proportions: the store fails for
three lease lengths, so leases do lapse while it does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server.engine.recovery import FaultPolicy
from server.faults import StorageFull, StoreBusy
from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import JobStatus
from server.media.blobs import LocalBlobs
from tests.fakes import FakeWorker, request, rig, submit, wait_final

FAST = FaultPolicy(max_attempts=3, backoff_s=0.05, backoff_cap_s=0.2, no_worker_grace_s=1.0)


class FlakyStore(SqliteJobStore):
    """The real SQLite store, with failures injected per method: `fail[name]()` says whether this call fails."""

    def __init__(self, path: Path, lease_s: float) -> None:
        super().__init__(path, lease_s=lease_s)
        self.fail: dict[str, Callable[[], bool]] = {}
        self.failed: dict[str, int] = {}

    def _maybe(self, name: str) -> None:
        rule = self.fail.get(name)
        if rule is not None and rule():
            self.failed[name] = self.failed.get(name, 0) + 1
            raise StoreBusy(f"injected: {name}")

    def pending(self, *a: Any, **k: Any) -> Any:
        self._maybe("pending")
        return super().pending(*a, **k)

    def claim(self, *a: Any, **k: Any) -> Any:
        self._maybe("claim")
        return super().claim(*a, **k)

    def set_batch(self, *a: Any, **k: Any) -> Any:
        self._maybe("set_batch")
        return super().set_batch(*a, **k)

    def set_progress(self, *a: Any, **k: Any) -> Any:
        self._maybe("set_progress")
        return super().set_progress(*a, **k)

    def renew(self, *a: Any, **k: Any) -> Any:
        self._maybe("renew")
        return super().renew(*a, **k)

    def requeue_expired(self, *a: Any, **k: Any) -> Any:
        self._maybe("requeue_expired")
        return super().requeue_expired(*a, **k)

    def _finish(self, *a: Any, **k: Any) -> Any:
        self._maybe("finish")
        return super()._finish(*a, **k)


def once() -> Callable[[], bool]:
    fired = [False]

    def rule() -> bool:
        first = not fired[0]
        fired[0] = True
        return first

    return rule


def until(deadline: float) -> Callable[[], bool]:
    return lambda: time.monotonic() < deadline


def _same_thread_rendered_next(r: Any, before: threading.Thread | None, job: str) -> None:
    submit(r.store, job, request(job))
    r.engine.notify()
    wait_final(r.store, [job])
    assert r.store.get(job).status is JobStatus.COMPLETED
    slot = r.engine.slots[0]
    assert slot.alive and slot.thread is before and r.engine.stats["worker_restarts"] == 0


def test_an_input_deleted_between_accept_and_claim_fails_its_job_alone(tmp_path: Path) -> None:
    worker = FakeWorker("w0")
    r = rig(tmp_path, [worker], max_batch=1, faults=FAST)
    edit = replace(request("edit it"), source_paths=("gone-job/source-0.png",))
    submit(r.store, "poison", edit)
    r.engine.start()
    try:
        wait_final(r.store, ["poison"])
        thread = r.engine.slots[0].thread
        _same_thread_rendered_next(r, thread, "next")
    finally:
        r.engine.stop()
    poison = r.store.get("poison")
    assert poison is not None and poison.status is JobStatus.FAILED
    assert poison.error is not None and poison.error["code"] == "input_missing" and poison.error["attempts"] == 3
    assert "gone-job" not in poison.error["message"]  # no paths reach a client
    assert poison.attempts == 3 and [f["code"] for f in poison.retries or []] == ["input_missing"] * 2
    assert r.engine.stats["job_retries"] == 2 and len(worker.calls) == 1  # the poison job never reached the device


def test_a_job_that_asked_for_no_retries_fails_at_its_first_fault(tmp_path: Path) -> None:
    """fal's x-fal-no-retry: the same poison job fails at once, with no retries recorded."""
    r = rig(tmp_path, [FakeWorker("w0")], max_batch=1, faults=FAST)
    edit = replace(request("edit it"), source_paths=("gone-job/source-0.png",), no_retry=True)
    submit(r.store, "poison", edit)
    r.engine.start()
    try:
        wait_final(r.store, ["poison"])
    finally:
        r.engine.stop()
    poison = r.store.get("poison")
    assert poison is not None and poison.status is JobStatus.FAILED and not poison.retries
    assert poison.error is not None and poison.error["code"] == "input_missing" and poison.error["attempts"] == 1


def test_a_store_write_that_fails_once_costs_nothing_but_a_retry(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "jobs.sqlite3", lease_s=2.0)
    for name in ("claim", "set_batch", "set_progress", "finish"):
        store.fail[name] = once()
    r = rig(tmp_path, [FakeWorker("w0")], max_batch=1, store=store, faults=FAST, reap_every_s=0.1)
    submit(store, "a", request("a"))
    r.engine.start()
    try:
        wait_final(store, ["a"], timeout=30)
        _same_thread_rendered_next(r, r.engine.slots[0].thread, "b")
    finally:
        r.engine.stop()
    a = store.get("a")
    assert a is not None and a.status is JobStatus.COMPLETED and a.finishes == 1, a
    assert set(store.failed) == {"claim", "set_batch", "set_progress", "finish"}
    assert r.engine.stats["loop_errors"] == 1  # the failed claim: one round retried, nothing else noticed


def test_a_store_failing_for_three_leases_stops_nothing(tmp_path: Path) -> None:
    """Every write fails (and so every lease lapses) for three lease lengths; afterwards the job accepted before
    renders and the worker thread that lived through it renders the next one."""
    store = FlakyStore(tmp_path / "jobs.sqlite3", lease_s=1.0)
    r = rig(tmp_path, [FakeWorker("w0", steps=20, step_s=0.05)], max_batch=1, store=store, faults=FAST,
            reap_every_s=0.1)
    submit(store, "a", request("a"))
    r.engine.start()
    try:
        deadline = time.monotonic() + 10
        while store.get("a").progress_step < 2:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        thread = r.engine.slots[0].thread
        outage = until(time.monotonic() + 3 * store.lease_s)
        for name in ("pending", "claim", "set_batch", "set_progress", "renew", "requeue_expired", "finish"):
            store.fail[name] = outage
        wait_final(store, ["a"], timeout=60)
        _same_thread_rendered_next(r, thread, "b")
    finally:
        r.engine.stop()
    a = store.get("a")
    assert a is not None and a.status is JobStatus.COMPLETED and a.finishes == 1, a
    assert store.failed.get("finish") and store.failed.get("renew")
    assert r.engine.stats["supervision_errors"] > 0


def test_failing_progress_writes_never_fail_a_render(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "jobs.sqlite3", lease_s=30.0)
    store.fail["set_progress"] = lambda: True
    r = rig(tmp_path, [FakeWorker("w0", steps=10)], max_batch=1, store=store, faults=FAST)
    submit(store, "a", request("a"))
    r.engine.start()
    try:
        wait_final(store, ["a"])
    finally:
        r.engine.stop()
    a = store.get("a")
    assert a is not None and a.status is JobStatus.COMPLETED and a.attempts == 1
    assert store.failed["set_progress"] >= 1 and r.engine.stats["loop_errors"] == 0


class FillableBlobs(LocalBlobs):
    """The data dir, refusing writes with a full disk while `full` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.full = threading.Event()

    def put(self, key: str, data: bytes) -> None:
        if self.full.is_set():
            raise StorageFull("files")
        super().put(key, data)


def test_a_full_disk_parks_jobs_until_space_returns(tmp_path: Path) -> None:
    blobs = FillableBlobs(tmp_path)
    worker = FakeWorker("w0")
    r = rig(tmp_path, [worker], max_batch=1, blobs=blobs, faults=FAST)
    blobs.full.set()
    for jid in ("a", "b"):
        submit(r.store, jid, request(jid))
    r.engine.start()
    try:
        deadline = time.monotonic() + 10
        while r.engine.storage.closed_by is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r.engine.wait_idle(5)  # a render already running when the disk filled may still finish (and be parked)
        calls_while_full = len(worker.calls)
        time.sleep(0.5)  # several probe intervals: nothing more is rendered while full
        assert len(worker.calls) == calls_while_full <= 2 and r.store.counts() == {"pending": 2}
        blobs.full.clear()
        wait_final(r.store, ["a", "b"])
    finally:
        r.engine.stop()
    for jid in ("a", "b"):
        record = r.store.get(jid)
        assert record is not None and record.status is JobStatus.COMPLETED and not record.retries
    assert r.engine.storage.closed_by is None and r.engine.stats["parked_for_storage"] == calls_while_full
    assert not list((tmp_path / "files").glob(".*.tmp"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the point of the test
def test_a_worker_thread_that_dies_anyway_is_restarted_and_counted(tmp_path: Path) -> None:
    worker = FakeWorker("w0")
    r = rig(tmp_path, [worker], max_batch=1, faults=FAST)
    schedule = r.engine.scheduler.schedule
    died = [False]

    def dies_once(*a: Any, **k: Any) -> Any:
        if not died[0]:
            died[0] = True
            raise SystemExit("a thread-killing failure past every guard")
        return schedule(*a, **k)

    r.engine.scheduler.schedule = dies_once  # type: ignore[method-assign]
    submit(r.store, "a", request("a"))
    r.engine.start()
    try:
        wait_final(r.store, ["a"], timeout=30)
    finally:
        r.engine.stop()
    assert r.store.get("a").status is JobStatus.COMPLETED  # type: ignore[union-attr]
    assert r.engine.stats["worker_restarts"] == 1 and r.engine.slots[0].alive is False  # stopped by stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the point of the test
def test_no_worker_running_past_the_grace_period_asks_for_a_restart(tmp_path: Path) -> None:
    faults: list[str] = []
    worker = FakeWorker("w0")
    r = rig(tmp_path, [worker], max_batch=1, faults=FAST, on_fault=faults.append)

    def preload_dies(_names: list[str]) -> None:
        raise SystemExit("this worker's thread dies at every start")

    worker.preload = preload_dies  # type: ignore[method-assign]
    r.engine.preload = ["sdxl-base-1.0"]
    r.engine.start()
    try:
        deadline = time.monotonic() + 15
        while not faults:
            assert time.monotonic() < deadline, "the watchdog never asked for a restart"
            time.sleep(0.05)
    finally:
        r.engine.stop()
    assert faults == ["no worker running for 1 s"] and r.engine.stats["worker_restarts"] >= 1
