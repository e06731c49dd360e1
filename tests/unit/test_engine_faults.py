"""The engine with injected faults (tiny models, CPU): an out-of-memory shared call is split and retried, a
single job that runs out of memory fails clearly, and a device fault takes the worker out and re-queues its
jobs onto another worker. Nothing accepted is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from pipelines.base import Task
from pipelines.sdxl import SDXLFamily
from server.engine.costs import load_costs
from server.engine.loop import Engine
from server.engine.policy import BatchConfig, Placement
from server.engine.request import GenerationRequest
from server.engine.scheduler import VramAwareScheduler
from server.engine.worker import Rendered, Worker
from server.jobs.store import FINAL_STATES, JobStatus, JobStore
from server.media.storage import OutputStore
from weights.locate import LocatedWeights
from weights.manifest import load_manifest


class FlakyWorker(Worker):
    """A real worker whose family raises torch's OOM on calls with more than `oom_above` images, and which
    can raise a CUDA-style device fault on its first render."""

    def __init__(self, *args: Any, oom_above: int | None = None, fault_first: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.oom_above = oom_above
        self.fault_first = fault_first
        self.calls: list[int] = []

    def render(self, request: GenerationRequest, on_step: Callable[[int, int], None],
               force: Placement | None = None) -> Rendered:
        self.calls.append(request.num_images)
        if self.fault_first:
            self.fault_first = False
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        fam, _ = self.family(request.weights)
        if self.oom_above is not None and not getattr(fam, "_flaky", False):
            real, limit = fam.render, self.oom_above

            def render(spec: Any, step: Callable[[int, int], None]) -> Any:
                if spec.params.num_images > limit:
                    raise torch.OutOfMemoryError("CUDA out of memory (injected)")
                return real(spec, step)

            fam.render = render  # type: ignore[method-assign]
            fam._flaky = True  # type: ignore[attr-defined]
        return super().render(request, on_step, force)


def _request(prompt: str, num_images: int = 1) -> GenerationRequest:
    return GenerationRequest(model_id="seedream-4.0", weights="sdxl-base-1.0", family="sdxl", task=Task.GENERATE,
                             prompt=prompt, width=64, height=64, num_images=num_images,
                             seeds=tuple(range(1, num_images + 1)), num_inference_steps=2, guidance_scale=5.0,
                             strength=0.6, output_format="png")


def _engine(tmp_path: Path, workers: list[Worker], max_batch: int = 4, **kw: Any) -> tuple[Engine, JobStore]:
    store = JobStore(tmp_path / "jobs.sqlite3")
    costs = load_costs()
    scheduler = VramAwareScheduler(BatchConfig(max_batch=max_batch), workers[0].footprint, costs.transfer)
    return Engine(store, scheduler, workers, OutputStore(tmp_path / "files"), lambda _id: None, wait_s=0.05,
                  **kw), store


def _submit(store: JobStore, jid: str, request: GenerationRequest) -> None:
    key = "|".join(str(p) for p in SDXLFamily.batch_key(request.render_params()))
    store.create(jid, request.model_id, key, request.to_json(), weights=request.weights)


def _wait_final(store: JobStore, ids: list[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(store.get(i).status in FINAL_STATES for i in ids):  # type: ignore[union-attr]
            return
        time.sleep(0.05)
    raise AssertionError("jobs did not finish")


@pytest.fixture
def located(demo_dir: Path) -> dict[str, LocatedWeights]:
    entry = load_manifest()["sdxl-base-1.0"]
    return {"sdxl-base-1.0": LocatedWeights(entry, demo_dir / "sdxl-base-1.0", demo=True)}


def test_an_out_of_memory_shared_call_is_split_and_every_job_completes(tmp_path: Path, located: dict) -> None:
    worker = FlakyWorker("w0", "cpu", torch.float32, located, oom_above=1)
    engine, store = _engine(tmp_path, [worker])
    ids = [f"j{i}" for i in range(4)]
    for i, jid in enumerate(ids):
        _submit(store, jid, _request(f"prompt {i}"))
    engine.start()
    try:
        _wait_final(store, ids)
    finally:
        engine.stop()
    records = [store.get(i) for i in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]  # type: ignore[union-attr]
    # 4 in one call -> OOM -> 2 + 2 -> OOM -> 1 + 1 + 1 + 1.
    assert worker.calls == [4, 2, 1, 1, 2, 1, 1]
    assert engine.stats["oom_splits"] == 3
    assert all(r.batch["size"] == 1 and r.batch.get("split_from") for r in records)  # type: ignore[union-attr]


def test_a_single_job_out_of_memory_fails_clearly_and_the_worker_goes_on(tmp_path: Path, located: dict) -> None:
    worker = FlakyWorker("w0", "cpu", torch.float32, located, oom_above=2)
    engine, store = _engine(tmp_path, [worker], max_batch=1)
    _submit(store, "big", _request("three at once", num_images=3))
    _submit(store, "small", _request("one"))
    engine.start()
    try:
        _wait_final(store, ["big", "small"])
    finally:
        engine.stop()
    big, small = store.get("big"), store.get("small")
    assert big.status is JobStatus.FAILED and big.error["code"] == "out_of_memory"  # type: ignore[union-attr]
    assert "even with offload" in big.error["message"]  # type: ignore[union-attr]
    assert small.status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_a_device_fault_takes_the_worker_out_and_its_jobs_run_elsewhere(tmp_path: Path, located: dict) -> None:
    bad = FlakyWorker("w0", "cpu", torch.float32, located, fault_first=True)
    good = FlakyWorker("w1", "cpu", torch.float32, located)
    faults: list[str] = []
    engine, store = _engine(tmp_path, [bad, good], max_batch=1, on_fault=faults.append)
    started = threading.Event()
    # Hold the good worker back until the bad one has claimed the first job.
    original = good.render

    def gated(*args: Any, **kw: Any) -> Rendered:
        started.wait(30)
        return original(*args, **kw)

    good.render = gated  # type: ignore[method-assign]
    ids = ["a", "b"]
    for jid in ids:
        _submit(store, jid, _request(jid))
    engine.start()
    try:
        deadline = time.monotonic() + 30
        while bad.fault is None and time.monotonic() < deadline:
            time.sleep(0.02)
        started.set()
        _wait_final(store, ids)
    finally:
        engine.stop()
    assert bad.fault and engine.stats["device_faults"] == 1
    assert faults == [bad.fault] and "device fault" in faults[0]  # the app turns this into a process restart
    assert all(store.get(i).status is JobStatus.COMPLETED for i in ids)  # type: ignore[union-attr]
    assert {store.get(i).worker for i in ids} == {"w1"}  # type: ignore[union-attr]
    assert store.get("a").attempts + store.get("b").attempts == 3  # type: ignore[union-attr]  # one re-queued


def test_a_hung_worker_is_taken_out_and_its_late_answer_is_discarded(tmp_path: Path, located: dict) -> None:
    """The watchdog re-queues a render that makes no step; when the stuck call finally returns, its result is
    thrown away (the job was finished once, by the other worker) and its files are removed."""
    workers = [FlakyWorker(f"w{i}", "cpu", torch.float32, located) for i in range(2)]
    release = threading.Event()
    first: list[Worker] = []  # whichever worker claims the job first is the one that hangs
    guard = threading.Lock()

    def hanging(worker: FlakyWorker) -> Callable[..., Rendered]:
        original = worker.render

        def render(*args: Any, **kw: Any) -> Rendered:
            with guard:
                hangs = not first
                if hangs:
                    first.append(worker)
            if hangs:
                release.wait(30)
            return original(*args, **kw)

        return render

    for w in workers:
        w.render = hanging(w)  # type: ignore[method-assign]
    faults: list[str] = []
    # Loaded up front: the watchdog also times the load before a job's first step.
    engine, store = _engine(tmp_path, workers, max_batch=1, step_timeout_s=2.0, on_fault=faults.append,
                            preload=["sdxl-base-1.0"])
    _submit(store, "a", _request("a"))
    engine.start()
    try:
        _wait_final(store, ["a"])
        release.set()
        stuck = first[0]
        deadline = time.monotonic() + 30
        while stuck.busy_with and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        engine.stop()
    good = next(w for w in workers if w is not stuck)
    record = store.get("a")
    assert record is not None and record.status is JobStatus.COMPLETED and record.worker == good.name
    assert record.finishes == 1 and record.attempts == 2
    assert stuck.fault and "hung" in stuck.fault and faults == [stuck.fault]
    assert engine.stats["hung_workers"] == 1
    # Only the kept result's image is on disk.
    kept = {i["file"] for i in record.result["images"]}  # type: ignore[index]
    assert {p.name for p in (tmp_path / "files").iterdir() if not p.name.startswith(".")} == kept


def test_a_drain_that_runs_out_of_time_puts_running_jobs_back(tmp_path: Path, located: dict) -> None:
    from server.lifecycle import Lifecycle

    worker = FlakyWorker("w0", "cpu", torch.float32, located)
    engine, store = _engine(tmp_path, [worker], max_batch=1)
    slow = replace(_request("slow"), num_inference_steps=400)
    _submit(store, "slow", slow)
    _submit(store, "queued", _request("queued"))
    exited = threading.Event()
    lifecycle = Lifecycle(engine, store, drain_timeout_s=0.2, restart_on_fault=True)
    lifecycle.on_exit(exited.set)
    engine.start()
    try:
        deadline = time.monotonic() + 30
        while store.get("slow").progress_step < 1 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        assert lifecycle.begin_drain("test") and not lifecycle.begin_drain("again")
        assert exited.wait(30)
    finally:
        engine.stop()
    slow_rec, queued = store.get("slow"), store.get("queued")
    assert slow_rec.status is JobStatus.PENDING and slow_rec.finishes == 0  # type: ignore[union-attr]
    assert queued.status is JobStatus.PENDING and queued.attempts == 0  # type: ignore[union-attr]


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
    lifecycle = Lifecycle(engine, JobStore(tmp_path / "jobs.sqlite3"), 5.0, restart_on_fault=supervised)  # type: ignore[arg-type]
    exited = threading.Event()
    lifecycle.on_exit(exited.set)
    lifecycle.fault("cuda:0: device fault; taken out of service")
    assert exited.wait(5) is supervised
    assert lifecycle.restart is supervised and lifecycle.draining is supervised and engine.claiming is not supervised
