"""Which front end runs the engine for shared workers (server/cluster/leadership.py), with stand-in parts: the lock
and the cluster are the interfaces the PostgreSQL store and Ray implement (tested for real in tests/unit/test_store.py
and tests/cluster)."""

from __future__ import annotations

import threading
import time
from typing import Any

from server.cluster.leadership import EngineLeadership
from server.jobs.store import EngineLock


class _Lock(EngineLock):
    def __init__(self, free: bool = True) -> None:
        self.free = free
        self.mine = False

    def try_acquire(self) -> bool:
        if self.free:
            self.free, self.mine = False, True
        return self.mine

    def held(self) -> bool:
        return self.mine

    def release(self) -> None:
        if self.mine:
            self.free, self.mine = True, False


class _Engine:
    def __init__(self) -> None:
        self.started = False
        self.ready = threading.Event()
        self.added: list[Any] = []

    def start(self) -> None:
        self.started = True

    def add_worker(self, handle: Any) -> None:
        self.added.append(handle)


class _SlowCluster:
    """A node joining: its actor's constructor (loading weights) takes a long time."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def discover(self, wait_s: float = 0.0) -> list[Any]:
        self.release.wait(30)
        return [type("Handle", (), {"name": "w-new", "device": "10.0.0.9/cuda:0"})()]


def _until(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_the_holder_runs_the_engine_and_the_others_only_serve() -> None:
    lock = _Lock(free=False)  # another front end holds it
    engine = _Engine()
    lead = EngineLeadership(engine, lock, _SlowCluster(), on_lost=lambda _: None, poll_s=0.02, discover_every_s=60)
    lead.start()
    try:
        assert not engine.started and engine.ready.is_set()  # ready: it takes requests for the cluster's workers
        lock.free = True  # the holder died: its session ended
        assert _until(lambda: engine.started)
    finally:
        lead.stop()


def test_a_lost_lock_is_noticed_while_a_joining_node_loads() -> None:
    lock, engine, cluster = _Lock(), _Engine(), _SlowCluster()
    lost: list[str] = []
    lead = EngineLeadership(engine, lock, cluster, on_lost=lost.append, poll_s=0.02, discover_every_s=0.05)
    lead.start()
    try:
        assert engine.started
        time.sleep(0.2)  # discovery is now waiting on the joining node's actor
        lock.mine = False  # the session ended (database restart) and another front end took the lock
        assert _until(lambda: bool(lost)), "the lost lock went unnoticed while discovery waited"
        assert "another front end" in lost[0]
    finally:
        cluster.release.set()
        lead.stop()


def test_a_front_end_with_no_worker_yet_queues_and_runs_once_one_joins(tmp_path: Any) -> None:
    """Nodes rebooting: the engine starts with no worker at all, jobs wait in the queue (admission accepts them
    without an estimate), and the first worker discovery finds runs them; it tells which weights are demo ones."""
    from server.jobs.store import JobStatus
    from tests.fakes import FakeWorker, request, submit, wait_final
    from tests.fakes import rig as make_rig

    class _Joining:
        def __init__(self) -> None:
            self.ready = threading.Event()
            self.worker = FakeWorker("w-late")
            self.worker.demo_weights = lambda: frozenset({"sdxl-base-1.0"})  # type: ignore[method-assign]
            self.given = False

        def discover(self, wait_s: float = 0.0) -> list[Any]:
            if not self.ready.is_set() or self.given:
                return []
            self.given = True
            return [self.worker]

    cluster = _Joining()
    r = make_rig(tmp_path, [cluster.worker])
    r.engine.slots.clear()  # the rig needs a worker to build; the cluster's front end starts without one
    assert not r.engine.cpu_only()  # nothing known yet: no CPU-only defaults
    admission = r.engine.admit("seedream-4.0", "sdxl-base-1.0", "sdxl", request("p").params)
    assert admission.estimate["device"] is None and "waits in the queue" in str(admission.estimate["basis"])
    joined: list[Any] = []
    lead = EngineLeadership(r.engine, _Lock(), cluster, on_lost=lambda _: None, poll_s=0.02,
                            discover_every_s=0.05, on_joined=joined.append)
    submit(r.store, "early", request("early"))
    lead.start()
    try:
        time.sleep(0.3)
        assert r.engine.started and r.store.get("early").status is JobStatus.PENDING  # type: ignore[union-attr]
        cluster.ready.set()
        wait_final(r.store, ["early"], timeout=30)
    finally:
        lead.stop()
        r.engine.stop()
    assert r.store.get("early").status is JobStatus.COMPLETED and joined == [cluster.worker]  # type: ignore[union-attr]
