"""The engine's read model: one typed, immutable picture of the workers, what they hold, the queue and the
batching counters, taken at once. /api/v1/engine, /ready, /metrics and the acceleration views read this and
nothing else of the engine, so the engine's inner structures (slots, threads, counters) can change freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ModelOnWorker:
    """A weights entry a worker holds: on its device (with the placement and acceleration applied) or parked in
    its host-RAM tier."""

    weights: str
    bytes: int
    placement: str | None = None
    acceleration: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class WorkerState:
    """One worker as the engine sees it now."""

    name: str
    device: str
    alive: bool
    """Its thread runs (or, on a front end that does not run the engine, its actor answers)."""
    fault: str | None
    """Why its device was taken out of service, if it was."""
    busy_with: tuple[str, ...]
    """Job ids of the batch it renders now."""
    resident: tuple[ModelOnWorker, ...]
    host_ram: tuple[ModelOnWorker, ...]
    budget_bytes: int | None
    loads: int
    evictions: int
    bytes_moved: int
    memory: Mapping[str, int] | None
    """Allocated and reserved device bytes (None on a CPU)."""
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """What else the worker reports (device name, Ray node, a reason it is unreachable), shown as is."""

    @classmethod
    def of(cls, view: Mapping[str, Any], alive: bool, fault: str | None, busy_with: tuple[str, ...]) -> WorkerState:
        """From a worker handle's own report (`WorkerHandle.snapshot`) and the engine's bookkeeping."""
        known = {"name", "device", "resident", "host_ram", "budget_bytes", "loads", "evictions", "bytes_moved",
                 "memory", "fault", "current_batch"}
        return cls(
            name=str(view["name"]), device=str(view["device"]), alive=alive, fault=fault, busy_with=busy_with,
            resident=tuple(ModelOnWorker(r["weights"], int(r["bytes"]), r.get("placement"),
                                         _frozen(r["acceleration"]) if r.get("acceleration") else None)
                           for r in view.get("resident", ())),
            host_ram=tuple(ModelOnWorker(r["weights"], int(r["bytes"])) for r in view.get("host_ram", ())),
            budget_bytes=view.get("budget_bytes"), loads=int(view.get("loads", 0)),
            evictions=int(view.get("evictions", 0)), bytes_moved=int(view.get("bytes_moved", 0)),
            memory=_frozen(view["memory"]) if view.get("memory") else None,
            detail=_frozen({k: v for k, v in view.items() if k not in known}))

    @property
    def serving(self) -> bool:
        """In service: alive and not taken out."""
        return self.alive and self.fault is None

    def holds(self, weights: str) -> ModelOnWorker | None:
        """The entry for `weights` on the device, if it is there."""
        return next((r for r in self.resident if r.weights == weights), None)

    def as_json(self, shown_batch: list[str] | None = None) -> dict[str, Any]:
        """The /api/v1/engine shape; `shown_batch` replaces the batch's ids (other keys' jobs left out)."""
        batch = list(self.busy_with) if shown_batch is None else shown_batch
        return {**self.detail, "name": self.name, "device": self.device, "budget_bytes": self.budget_bytes,
                "resident": [{"weights": r.weights, "bytes": r.bytes, "placement": r.placement,
                              "acceleration": dict(r.acceleration) if r.acceleration else None}
                             for r in self.resident],
                "host_ram": [{"weights": r.weights, "bytes": r.bytes} for r in self.host_ram],
                "loads": self.loads, "evictions": self.evictions, "bytes_moved": self.bytes_moved,
                "memory": dict(self.memory) if self.memory else None, "fault": self.fault,
                "current_batch": batch, "other_keys_jobs": len(self.busy_with) - len(batch)}


@dataclass(frozen=True)
class QueueState:
    """The job store's side: pending jobs per weights entry and jobs per status."""

    pending_by_weights: Mapping[str, int]
    counts: Mapping[str, int]


@dataclass(frozen=True)
class EngineSnapshot:
    """Everything the engine shows, taken at one moment."""

    workers: tuple[WorkerState, ...]
    running: tuple[str, ...]
    """Jobs being rendered or stored now."""
    runs_engine: bool
    """Whether this process runs the engine (with a Ray cluster only the lock holder does)."""
    ready: bool
    """Start-up loading has finished."""
    load_failures: tuple[str, ...]
    storage_full: bool
    """No new job starts until the output storage has room."""
    batching: Mapping[str, int]
    not_batched: Mapping[str, int]
    queue: QueueState | None
    """None when the snapshot was taken without the store (readiness)."""
    gangs: tuple[Mapping[str, Any], ...] = ()
    """Gangs of devices (server/engine/gang_worker.py): size, devices, members, the model and plan they hold
    formed, the job they run."""

    @property
    def serving(self) -> tuple[WorkerState, ...]:
        """Workers in service."""
        return tuple(w for w in self.workers if w.serving)

    def active_acceleration(self, weights: str) -> dict[str, Any] | None:
        """What a serving worker that has `weights` loaded actually runs (None until one has)."""
        for worker in self.workers:
            held = worker.holds(weights) if worker.fault is None else None
            if held is not None and held.acceleration:
                return {"worker": worker.name, "device": worker.device, **held.acceleration}
        return None
