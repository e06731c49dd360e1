"""The worker interface the engine loop drives: one per device, torch-free.

Implementations: `server/engine/worker.py` (a device in this process, calling diffusers), `server/cluster/`
(a Ray actor holding a GPU on another machine) and the tests' fake worker. The loop never sees an exception
from a render: every way a render can end is an `Outcome`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from server.engine.policy import DeviceState, ModelFootprint
from server.engine.work import Outcome, RenderWork

StepReport = Callable[[int, int], None]
"""Called with (steps done, steps total) as a render progresses; raising `pipelines.base.RenderCancelled` from
it asks the render to stop at that step boundary (the render then ends `Cancelled`)."""
PreviewReport = Callable[[int, int, tuple[bytes, ...]], None]
"""Called with (step, total, one JPEG per image of the call) when a live preview is ready; from any thread."""


class WorkerHandle(ABC):
    """A device that renders work: its memory state for the scheduler, residency actions, and renders."""

    name: str
    """Unique among the engine's workers (lease owners and logs use it)."""
    device: str
    """What the device is, e.g. `cuda:0`, `cpu`, `node-3/cuda:1`."""
    budget: int | None
    """Bytes models and activations may use there (None: unmanaged, as on a CPU)."""
    gpus: int = 1
    """Devices it renders on together: 1, or a gang's k (server/engine/gang_worker.py)."""
    members: tuple[str, ...] = ()
    """A gang's: the single-device workers whose devices it takes while it runs."""

    @abstractmethod
    def state(self) -> DeviceState:
        """The device as the scheduling policy sees it (resident and parked models, budget)."""

    @abstractmethod
    def footprint(self, weights: str) -> ModelFootprint:
        """Bytes per component of `weights` at this device's dtype."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """What /api/v1/engine and /metrics show of this worker (safe to call from any thread)."""

    @abstractmethod
    def preload(self, names: list[str]) -> None:
        """Load `names` while they fit the budget beside each other (start-up warm-up)."""

    @abstractmethod
    def evict(self, weights: str) -> None:
        """Drop `weights` from the device and its host-RAM tier."""

    @abstractmethod
    def render(self, work: RenderWork, on_step: StepReport, on_preview: PreviewReport | None = None) -> Outcome:
        """Make `work`'s outputs, bringing its model onto the device first as the residency policy says; previews
        (when `work.previews` asks and the family makes them) go to `on_preview`."""

    def make_room(self, nbytes: int) -> None:
        """Free device memory until `nbytes` fit beside what stays (a gang is about to use this device)."""

    def release(self) -> None:
        """A gang: end its ranks, so its devices' memory is free for their single-device workers."""

    def memory_allocated(self) -> int:
        """Bytes the device allocator holds now (0 where not measurable)."""
        return 0

    def adapters_held(self) -> frozenset[str]:
        """Content hashes of the LoRA adapters this worker holds converted (their files need not be sent again)."""
        return frozenset()

    def demo_weights(self) -> frozenset[str]:
        """Weights this worker runs as tiny demo weights (a remote worker says so when it joins)."""
        return frozenset()

