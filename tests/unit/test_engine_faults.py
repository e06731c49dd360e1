"""The engine loop driven by a fake worker through every outcome a render can have: completed, out of memory
(a shared call split, a single job up the offload ladder), device fault, cancelled, failed (the request's own
fault, or the model's), a hung worker and a drain that runs out of time. Nothing accepted is lost and no job
finishes twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from server.engine.policy import Placement
from server.engine.work import DeviceFault, Failed, OutOfMemory
from server.jobs.sqlite import SqliteJobStore
from server.jobs.store import JobStatus
from tests.fakes import FakeWorker, request, rig, submit, wait_final


def _oom_above(n: int):
    return lambda work, _i: OutOfMemory("injected") if work.params.num_images > n else None


def test_an_out_of_memory_shared_call_is_split_and_every_job_completes(tmp_path: Path) -> None:
    worker = FakeWorker("w0", _oom_above(1))
    r = rig(tmp_path, [worker])
    ids = [f"j{i}" for i in range(4)]
    for i, jid in enumerate(ids):
        submit(r.store, jid, request(f"prompt {i}"))
    r.engine.start()
    try:
        wait_final(r.store, ids)
    finally:
        r.engine.stop()
    records = [r.store.get(i) for i in ids]
    assert all(x.status is JobStatus.COMPLETED for x in records), [x.error for x in records]  # type: ignore[union-attr]
    # 4 in one call -> OOM -> 2 + 2 -> OOM -> 1 + 1 + 1 + 1.
    assert [c.num_images for c in worker.calls] == [4, 2, 1, 1, 2, 1, 1]
    assert worker.calls[0].prompts == ("prompt 0", "prompt 1", "prompt 2", "prompt 3")
    assert r.engine.stats["oom_splits"] == 3
    assert all(x.batch["size"] == 1 and x.batch.get("split_from") for x in records)  # type: ignore[union-attr]


def test_a_single_job_out_of_memory_climbs_the_offload_ladder_then_fails_clearly(tmp_path: Path) -> None:
    worker = FakeWorker("w0", _oom_above(2), budget=10**12)
    r = rig(tmp_path, [worker], max_batch=1)
    submit(r.store, "big", request("three at once", num_images=3))
    submit(r.store, "small", request("one"))
    r.engine.start()
    try:
        wait_final(r.store, ["big", "small"])
    finally:
        r.engine.stop()
    big, small = r.store.get("big"), r.store.get("small")
    assert big.status is JobStatus.FAILED and big.error["code"] == "out_of_memory"  # type: ignore[union-attr]
    assert "even with offload" in big.error["message"]  # type: ignore[union-attr]
    assert [c.force for c in worker.calls[:3]] == [None, Placement.MODEL_OFFLOAD, Placement.GROUP_OFFLOAD]
    assert r.engine.stats["oom_retries"] == 2
    assert small.status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_a_device_fault_takes_the_worker_out_and_its_jobs_run_elsewhere(tmp_path: Path) -> None:
    gate = threading.Event()
    bad = FakeWorker("w0", lambda _w, i: DeviceFault("CUDA error: an illegal memory access") if i == 0 else None)
    good = FakeWorker("w1", lambda _w, _i: (gate.wait(30), None)[1])  # held back until the bad one faulted
    faults: list[str] = []
    r = rig(tmp_path, [bad, good], max_batch=1, on_fault=faults.append)
    ids = ["a", "b"]
    for jid in ids:
        submit(r.store, jid, request(jid))
    r.engine.start()
    try:
        deadline = time.monotonic() + 30
        while r.engine.slots[0].fault is None and time.monotonic() < deadline:
            time.sleep(0.02)
        gate.set()
        wait_final(r.store, ids)
    finally:
        r.engine.stop()
    slot = r.engine.slots[0]
    assert slot.fault and r.engine.stats["device_faults"] == 1
    assert faults == [slot.fault] and "device fault" in faults[0]  # the app turns this into a process restart
    assert all(r.store.get(i).status is JobStatus.COMPLETED for i in ids)  # type: ignore[union-attr]
    assert {r.store.get(i).worker for i in ids} == {"w1"}  # type: ignore[union-attr]
    assert r.store.get("a").attempts + r.store.get("b").attempts == 3  # type: ignore[union-attr]  # one re-queued


def test_a_hung_worker_is_taken_out_and_its_late_answer_is_discarded(tmp_path: Path) -> None:
    """The watchdog re-queues a render that makes no step; when the stuck call finally returns, its result is
    thrown away (the job was finished once, by the other worker) and its files are removed."""
    release = threading.Event()
    first: list[str] = []
    guard = threading.Lock()

    def hang_first(name: str):
        def script(_work, _i):
            with guard:
                hangs = not first
                if hangs:
                    first.append(name)
            if hangs:
                release.wait(30)
            return None
        return script

    workers = [FakeWorker(f"w{i}", None) for i in range(2)]
    for w in workers:
        w.script = hang_first(w.name)
    faults: list[str] = []
    r = rig(tmp_path, workers, max_batch=1, step_timeout_s=1.0, on_fault=faults.append)
    submit(r.store, "a", request("a"))
    r.engine.start()
    try:
        wait_final(r.store, ["a"])
        release.set()
        stuck = next(s for s in r.engine.slots if s.name == first[0])
        deadline = time.monotonic() + 30
        while stuck.busy_with and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        r.engine.stop()
    record = r.store.get("a")
    assert record is not None and record.status is JobStatus.COMPLETED and record.worker != stuck.name
    assert record.finishes == 1 and record.attempts == 2
    assert stuck.fault and "hung" in stuck.fault and faults == [stuck.fault]
    assert r.engine.stats["hung_workers"] == 1
    kept = {i["file"] for i in record.result["images"]}  # type: ignore[index]
    assert {p.name for p in (tmp_path / "files").iterdir() if not p.name.startswith(".")} == kept


def test_a_drain_that_runs_out_of_time_puts_running_jobs_back(tmp_path: Path) -> None:
    from server.lifecycle import Lifecycle

    worker = FakeWorker("w0", steps=400, step_s=0.01)
    r = rig(tmp_path, [worker], max_batch=1)
    submit(r.store, "slow", request("slow"))
    submit(r.store, "queued", request("queued"))
    exited = threading.Event()
    lifecycle = Lifecycle(r.engine, r.store, drain_timeout_s=0.2, restart_on_fault=True)
    lifecycle.on_exit(exited.set)
    r.engine.start()
    try:
        deadline = time.monotonic() + 30
        while r.store.get("slow").progress_step < 1 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        assert lifecycle.begin_drain("test") and not lifecycle.begin_drain("again")
        assert exited.wait(30)
    finally:
        r.engine.stop()
    slow, queued = r.store.get("slow"), r.store.get("queued")
    assert slow.status is JobStatus.PENDING and slow.finishes == 0 and slow.lease_owner is None  # type: ignore[union-attr]
    assert queued.status is JobStatus.PENDING and queued.attempts == 0  # type: ignore[union-attr]


def test_a_running_job_is_cancelled_at_its_next_step(tmp_path: Path) -> None:
    worker = FakeWorker("w0", steps=50, step_s=0.02)
    r = rig(tmp_path, [worker], max_batch=2)
    submit(r.store, "slow", request("slow"))
    r.engine.start()
    try:
        deadline = time.monotonic() + 30
        while r.store.get("slow").progress_step < 2 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        assert r.engine.cancel("slow")
        wait_final(r.store, ["slow"])
    finally:
        r.engine.stop()
    slow = r.store.get("slow")
    assert slow.status is JobStatus.CANCELLED and slow.progress_step < 50 and slow.finishes == 1  # type: ignore[union-attr]
    assert not r.engine.cancel("slow")  # already final


def test_failures_take_the_same_outcome_path_for_solo_and_shared_calls(tmp_path: Path) -> None:
    refused = {"code": "invalid_request", "message": "the family refuses this", "field": "strength"}

    def script(work, _i):
        prompts = work.params.prompts or (work.params.prompt,)
        if "refused" in prompts:
            return Failed("refused", refused)  # the request's own problem, in a shared call or alone
        if prompts == ("broken",):
            return Failed("RuntimeError: the model broke")
        return None

    worker = FakeWorker("w0", script)
    r = rig(tmp_path, [worker], max_batch=2)
    for jid in ("refused", "fine", "broken"):
        submit(r.store, jid, request(jid))
    r.engine.start()
    try:
        wait_final(r.store, ["refused", "fine", "broken"])
    finally:
        r.engine.stop()
    get = r.store.get
    # refused + fine shared a call; it failed for one request's reason, so each was run alone.
    assert [c.prompts for c in worker.calls[:3]] == [("refused", "fine"), (), ()]
    assert get("refused").status is JobStatus.FAILED and get("refused").error == refused  # type: ignore[union-attr]
    assert get("fine").status is JobStatus.COMPLETED  # type: ignore[union-attr]
    broken = get("broken")
    assert broken.status is JobStatus.FAILED and broken.error["code"] == "generation_failed"  # type: ignore[union-attr]
    assert "RuntimeError" not in broken.error["message"]  # type: ignore[union-attr]  # details stay in the log
    assert all(get(j).finishes == 1 for j in ("refused", "fine", "broken"))  # type: ignore[union-attr]


def test_a_cancel_requested_through_the_store_reaches_the_running_render(tmp_path: Path) -> None:
    """Another front end (or process) sharing the store asks for the cancel; the holder learns it when it
    renews its lease."""
    worker = FakeWorker("w0", steps=500, step_s=0.01)
    r = rig(tmp_path, [worker], max_batch=1, lease_s=3.0)
    submit(r.store, "long", request("long"))
    r.engine.start()
    try:
        deadline = time.monotonic() + 30
        while r.store.get("long").progress_step < 1 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        other = SqliteJobStore(tmp_path / "jobs.sqlite3")
        assert other.request_cancel("long")
        wait_final(r.store, ["long"], timeout=10)
    finally:
        r.engine.stop()
    assert r.store.get("long").status is JobStatus.CANCELLED  # type: ignore[union-attr]


class _IdleEngine:
    """Just the engine surface the lifecycle drives."""

    def __init__(self) -> None:
        self.claiming = True

    def stop_claiming(self) -> None:
        self.claiming = False

    def running(self) -> list[str]:
        return []

    def wait_idle(self, timeout: float) -> bool:
        return True

    def interrupt_running(self) -> None:
        raise AssertionError("nothing was running")


@pytest.mark.parametrize("supervised", [True, False])
def test_a_fault_restarts_only_when_supervised(tmp_path: Path, supervised: bool) -> None:
    from server.lifecycle import Lifecycle

    engine = _IdleEngine()
    lifecycle = Lifecycle(engine, SqliteJobStore(tmp_path / "jobs.sqlite3"), 5.0, restart_on_fault=supervised)  # type: ignore[arg-type]
    exited = threading.Event()
    lifecycle.on_exit(exited.set)
    lifecycle.fault("cuda:0: device fault; taken out of service")
    assert exited.wait(5) is supervised
    assert lifecycle.restart is supervised and lifecycle.draining is supervised and engine.claiming is not supervised


def test_outputs_are_stored_off_the_device_thread_under_a_renewed_lease(tmp_path: Path) -> None:
    """The next render starts while the last one's outputs are still being written (a batch of PNGs is no longer
    device time). The job being written keeps its lease past several lease lengths, runs once, and completes
    once its outputs are in; a drain counts it as running until then."""
    release, entered = threading.Event(), threading.Event()
    worker = FakeWorker("w0")
    r = rig(tmp_path, [worker], max_batch=1, lease_s=0.6, reap_every_s=0.1)
    save = r.engine.outputs.save

    def slow_save(image, fmt):  # type: ignore[no-untyped-def]
        if image.getpixel((0, 0))[0] == 1:  # the first job's seed
            entered.set()
            release.wait(30)
        return save(image, fmt)

    r.engine.outputs.save = slow_save  # type: ignore[method-assign]
    submit(r.store, "j0", request("first"))
    r.engine.start()
    try:
        assert entered.wait(10)
        submit(r.store, "j1", request("second"))
        r.engine.notify()
        deadline = time.monotonic() + 10
        while len(worker.calls) < 2:
            assert time.monotonic() < deadline, "the second render waited for the first one's outputs"
            time.sleep(0.02)
        time.sleep(1.5)  # 2.5 lease lengths, reaped every 0.1 s: only renewal keeps j0 its own
        assert r.store.get("j0").status is JobStatus.PROCESSING and "j0" in r.engine.running()  # type: ignore[union-attr]
        assert not r.engine.wait_idle(0.2)
        release.set()
        wait_final(r.store, ["j0", "j1"])
        assert r.engine.wait_idle(5)
    finally:
        release.set()
        r.engine.stop()
    for jid in ("j0", "j1"):
        record = r.store.get(jid)
        assert record is not None and record.status is JobStatus.COMPLETED, record
        assert record.attempts == 1 and record.finishes == 1 and record.result["images"]  # type: ignore[index]
    assert len(worker.calls) == 2


def test_a_render_that_outlives_stop_still_stores_its_outputs(tmp_path: Path) -> None:
    """stop() waits a bounded time for the workers and then shuts the savers down; a render that finishes after
    that (a slow device) stores its outputs on its own thread instead of failing with the pool gone."""
    hang = threading.Event()
    worker = FakeWorker("w0", hang=hang)
    r = rig(tmp_path, [worker], max_batch=1)
    submit(r.store, "j0", request("late"))
    r.engine.start()
    try:
        deadline = time.monotonic() + 10
        while not worker.calls:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r.engine.stop(timeout=0.2)  # the render is still blocked: the join gives up, the savers shut down
        hang.set()
        wait_final(r.store, ["j0"], timeout=10)
    finally:
        hang.set()
    record = r.store.get("j0")
    assert record is not None and record.status is JobStatus.COMPLETED and record.result["images"], record  # type: ignore[index]
