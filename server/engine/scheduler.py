"""The scheduling seam: queued jobs and one idle worker's state in, a batch plan out. No tensors, no I/O.

`VramAwareScheduler` adapts the job store's view of the queue to the pure
policy in server/engine/policy.py; the simulator drives that same policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipelines.batching import key_difference, shares_calls
from server.engine.policy import (
    BatchConfig,
    DeviceState,
    ModelFootprint,
    QueuedItem,
    Transfer,
    largest_batch,
    pick_batch,
    routed_elsewhere,
)
from server.jobs.store import QueuedJob


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler knows of a worker: its name, device and memory state, and the states of the other
    workers that are idle right now (the cluster routing rule looks at them)."""

    name: str
    device: str
    state: DeviceState
    idle_peers: tuple[DeviceState, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Run these jobs (same weights and batch key) as one batch on `worker`."""

    worker: str
    job_ids: tuple[str, ...]
    model: str
    batch_key: str = ""
    not_batched: Mapping[str, int] = field(default_factory=dict)


class Scheduler(Protocol):
    """Decides what an idle worker runs next."""

    def schedule(self, queue: Sequence[QueuedJob], worker: WorkerView, now: float) -> Plan | None:
        """A batch for `worker`, or None to wait (empty queue, or batches still gathering)."""
        ...


class VramAwareScheduler:
    """Batches by (weights, batch key), prefers resident models, ages waiting work, caps batches by memory."""

    def __init__(self, config: BatchConfig, footprint: Callable[[str], ModelFootprint], transfer: Transfer) -> None:
        self.config = config
        self.footprint = footprint
        self.transfer = transfer

    def schedule(self, queue: Sequence[QueuedJob], worker: WorkerView, now: float) -> Plan | None:
        # Models an idle peer can start sooner (resident there, or parked in its RAM) are that peer's to take.
        elsewhere = {m for m in {j.weights or j.model for j in queue} if worker.idle_peers and routed_elsewhere(
            m, self.footprint(m).bytes, worker.state, worker.idle_peers, self.transfer)}
        queue = [j for j in queue if (j.weights or j.model) not in elsewhere]
        items = [QueuedItem(j.id, j.weights or j.model, j.batch_key, j.created_at, j.priority) for j in queue]
        activation: dict[tuple[str, str], int] = {}
        for j in queue:
            key = (j.weights or j.model, j.batch_key)
            activation[key] = max(activation.get(key, 0), j.activation_bytes)
        state = worker.state

        def switch(model: str) -> float:
            return self.transfer.load_seconds(self.footprint(model).bytes, from_ram=model in state.ram)

        def cap(model: str, key: str) -> int:
            if not shares_calls(key):
                return 1
            return largest_batch(self.footprint(model), activation.get((model, key), 0), state.budget,
                                 self.config.max_batch)

        choice = pick_batch(items, state, now, self.config, switch, cap, key_difference)
        if choice is None:
            return None
        return Plan(worker.name, choice.job_ids, choice.model, choice.batch_key, choice.not_batched)
