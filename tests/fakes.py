"""A fake worker: the worker interface without torch, scripted per test. It renders flat images of the
requested size and can end a render any way a real device can (out of memory, device fault, cancelled, failed,
a hang)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.base import RenderCancelled
from server.engine.loop import Engine, EngineHooks
from server.engine.policy import BatchConfig, DeviceState, ModelFootprint, Resident
from server.engine.recovery import FaultPolicy
from server.engine.scheduler import VramAwareScheduler
from server.engine.work import Cancelled, Completed, Outcome, RenderWork
from server.engine.worker_handle import PreviewReport, StepReport, WorkerHandle
from server.jobs.sqlite import SqliteJobStore
from server.media.blobs import LocalBlobs
from server.media.storage import InputStore, OutputStore
from server.settings import EngineSettings
from tests.packaged import packaged_config

Script = Callable[[RenderWork, int], Outcome | None]
"""(work, call index) -> an outcome to end the render with, or None to render normally."""


@dataclass
class Call:
    """What one render was asked to do."""

    num_images: int
    force: Any
    prompts: tuple[str, ...]


class FakeWorker(WorkerHandle):
    """Scripted renders: `steps` steps of `step_s` each, then flat images; `script` may end a call otherwise."""

    def __init__(self, name: str = "w0", script: Script | None = None, steps: int = 2, step_s: float = 0.0,
                 budget: int | None = None, hang: threading.Event | None = None) -> None:
        self.name = name
        self.device = f"fake:{name}"
        self.budget = budget
        self.script = script
        self.steps = steps
        self.step_s = step_s
        self.hang = hang
        """When set for a call (by the script returning None with hang armed), the render blocks until released."""
        self.calls: list[Call] = []
        self.resident: set[str] = set()
        self._lock = threading.Lock()

    def state(self) -> DeviceState:
        return DeviceState(self.name, self.budget, tuple(Resident(w, 1000) for w in sorted(self.resident)))

    def footprint(self, weights: str) -> ModelFootprint:
        return ModelFootprint(weights, (1000,))

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "budget_bytes": self.budget,
                "resident": [{"weights": w, "bytes": 1000, "placement": "resident"} for w in sorted(self.resident)],
                "host_ram": [], "loads": 0, "bytes_moved": 0}

    def preload(self, names: list[str]) -> None:
        self.resident |= set(names)

    def evict(self, weights: str) -> None:
        self.resident.discard(weights)

    def render(self, work: RenderWork, on_step: StepReport, on_preview: PreviewReport | None = None) -> Outcome:
        with self._lock:
            index = len(self.calls)
            self.calls.append(Call(work.params.num_images, work.force, work.params.prompts))
        scripted = self.script(work, index) if self.script else None
        if scripted is not None:
            return scripted
        if self.hang is not None and not self.hang.is_set():
            self.hang.wait(60)
        self.resident.add(work.weights)
        try:
            for step in range(1, self.steps + 1):
                time.sleep(self.step_s)
                on_step(step, self.steps)
                if work.previews is not None and on_preview is not None and step < self.steps:
                    on_preview(step, self.steps, tuple(_jpeg(seed + step) for seed in work.params.seeds))
        except RenderCancelled:
            return Cancelled()
        p = work.params
        images = [Image.new("RGB", (p.width, p.height), (seed % 256, 0, 0)) for seed in p.seeds]
        return Completed(images, [], 0.0, self.steps * self.step_s, {"worker": self.name, "device": self.device})


def _jpeg(shade: int) -> bytes:
    """A small JPEG whose colour tells which seed and step it shows."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (shade % 256, 64, 64)).save(out, "JPEG")
    return out.getvalue()


@dataclass
class Rig:
    """An engine on a real SQLite store with fake workers."""

    engine: Engine
    store: SqliteJobStore
    workers: list[FakeWorker] = field(default_factory=list)


def rig(tmp_path: Path, workers: list[FakeWorker], max_batch: int = 4, lease_s: float = 30.0,
        store: SqliteJobStore | None = None, blobs: LocalBlobs | None = None, **kw: Any) -> Rig:
    """An engine over `workers` with its store, files and inputs under `tmp_path`."""
    store = store or SqliteJobStore(tmp_path / "jobs.sqlite3", lease_s=lease_s)
    blobs = blobs or LocalBlobs(tmp_path)
    config = packaged_config()
    scheduler = VramAwareScheduler(BatchConfig(max_batch=max_batch), workers[0].footprint, config.costs.transfer)
    outputs = OutputStore(blobs)
    hooks = EngineHooks(on_fault=kw.pop("on_fault", lambda _reason: None), storage_probe=outputs.probe)
    settings = EngineSettings(step_timeout_s=kw.pop("step_timeout_s", 600.0), **kw.pop("settings", {}))
    engine = Engine(store, scheduler, workers, outputs, InputStore(blobs), settings, config, hooks,
                    faults=kw.pop("faults", None) or FaultPolicy())
    engine.wait_s = 0.05
    engine.reap_every_s = kw.pop("reap_every_s", Engine.reap_every_s)
    assert not kw, f"rig() does not take {sorted(kw)}"
    return Rig(engine, store, workers)


def request(prompt: str, num_images: int = 1, steps: int = 2) -> Any:
    """A small text-to-image request for the fake workers (SDXL's family, so it batches and merges)."""
    from pipelines.base import RenderParams, Task
    from server.engine.request import GenerationRequest

    params = RenderParams(Task.GENERATE, prompt, 64, 64, num_images, tuple(range(1, num_images + 1)), steps, 5.0, 0.6)
    return GenerationRequest(model_id="seedream-4.0", weights="sdxl-base-1.0", family="sdxl", params=params,
                             output_format="png")


def submit(store: SqliteJobStore, job_id: str, req: Any) -> None:
    """Insert a job for `req` as the service would."""
    from pipelines.registry import family_class
    from server.jobs.store import NewJob

    key = family_class(req.family).batch_key(req.params).encode()
    assert store.create(NewJob(job_id, req.model_id, key, req.to_json(), weights=req.weights))


def wait_final(store: SqliteJobStore, ids: list[str], timeout: float = 60.0) -> None:
    """Block until every job in `ids` is final."""
    from server.jobs.store import FINAL_STATES

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(store.get(i).status in FINAL_STATES for i in ids):  # type: ignore[union-attr]
            return
        time.sleep(0.05)
    raise AssertionError("jobs did not finish")


def run_engine_process(data: Path, name: str, expect: int, timeout: float = 120.0) -> None:
    """A whole engine loop in this process over `data/jobs.sqlite3`, rendering with a fake worker until
    `expect` jobs are final (the two-process test runs two of these against one store)."""
    r = rig(data, [FakeWorker(name, steps=3, step_s=0.02)], max_batch=2)
    # Start together with the other process (imports take a while): say ready, wait for the go.
    (data / f"{name}.ready").touch()
    deadline = time.monotonic() + timeout
    while not (data / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    r.engine.start()
    try:
        while time.monotonic() < deadline:
            counts = r.store.counts()
            if sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled")) >= expect:
                return
            time.sleep(0.05)
        raise SystemExit(f"{name}: jobs did not finish")
    finally:
        r.engine.stop()


if __name__ == "__main__":
    import sys

    run_engine_process(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
