"""Cluster routing (one rule, in server/engine/policy.py): an idle worker leaves a model to an idle peer that can
start it sooner (resident there, or parked in that node's RAM); busy peers do not hold work back."""

from __future__ import annotations

from server.engine.policy import GB, BatchConfig, DeviceState, ModelFootprint, Resident, Transfer, routed_elsewhere
from server.engine.scheduler import VramAwareScheduler, WorkerView
from server.jobs.store import QueuedJob

T = Transfer()
SIZE = int(24 * GB)


def _dev(name: str, resident: tuple[str, ...] = (), ram: frozenset[str] = frozenset()) -> DeviceState:
    return DeviceState(name, int(78 * GB), tuple(Resident(m, SIZE) for m in resident), ram)


def test_the_rule() -> None:
    me, holder, parked, empty = _dev("me"), _dev("p1", ("flux",)), _dev("p2", ram=frozenset({"flux"})), _dev("p3")
    assert routed_elsewhere("flux", SIZE, me, [holder], T)  # resident on an idle peer
    assert routed_elsewhere("flux", SIZE, me, [parked], T)  # a RAM load beats my disk load
    assert not routed_elsewhere("flux", SIZE, me, [empty], T)  # nobody is better placed: I may take it
    assert not routed_elsewhere("flux", SIZE, _dev("me", ("flux",)), [holder], T)  # I hold it too
    assert not routed_elsewhere("flux", SIZE, me, [], T)  # no idle peer (busy ones do not count)


def test_the_scheduler_leaves_a_peers_model_and_takes_its_own() -> None:
    scheduler = VramAwareScheduler(BatchConfig(max_batch=4), lambda m: ModelFootprint(m, (SIZE,)), T)
    queue = [QueuedJob("j1", "flux-kontext-pro", "k", 1.0, "flux"), QueuedJob("j2", "seedream-4.0", "k", 2.0, "sdxl")]
    me = WorkerView("w0", "cuda:0", _dev("w0", ("sdxl",)), idle_peers=(_dev("w1", ("flux",)),))
    plan = scheduler.schedule(queue, me, 10.0)
    assert plan is not None and plan.job_ids == ("j2",)
    # Only the peer's model queued: this worker waits (the peer takes it) rather than loading a second copy.
    assert scheduler.schedule(queue[:1], me, 10.0) is None
    # Once the peer is busy, an idle worker does take it.
    alone = WorkerView("w0", "cuda:0", _dev("w0", ("sdxl",)))
    assert scheduler.schedule(queue[:1], alone, 10.0).job_ids == ("j1",)  # type: ignore[union-attr]
