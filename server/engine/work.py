"""What crosses the worker interface: a render to do, as data, and its typed outcome.

Plain data only (numbers, strings, encoded image bytes, PIL images and arrays on the way back), so the same
values can be handed to an in-process worker, pickled to a Ray actor on another machine, or scripted by a test's
fake worker. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.base import RenderParams, VideoClip
from pipelines.previews import PreviewOptions
from server.engine.policy import Placement


@dataclass(frozen=True)
class RenderWork:
    """One pipeline call's worth of work: one request, or several merged into one call."""

    weights: str
    family: str
    params: RenderParams
    sources: tuple[bytes, ...] = ()
    references: tuple[bytes, ...] = ()
    masks: tuple[bytes, ...] = ()
    """Inputs as encoded images (PNG bytes the input store wrote), never local paths. A merged call (several
    requests: `params.prompts` set) has them per image, in image order (see pipelines.base.RenderSpec)."""
    force: Placement | None = None
    """An offload placement to use even where the policy would keep the model resident (the OOM ladder)."""
    demand: Mapping[str, int] = field(default_factory=dict)
    """Queued jobs per weights name when the work was planned: the cost-aware eviction order keeps those."""
    adapters: Mapping[str, bytes] = field(default_factory=dict)
    """LoRA files (safetensors bytes) by content hash, for the adapters the params name that the worker does
    not hold converted already (`WorkerHandle.adapters_held`)."""
    previews: PreviewOptions | None = None
    """Live previews to make as the call denoises (a job in it asked for them); None: none."""


@dataclass(frozen=True)
class Completed:
    """The render's images (or clips), in seed order, and what it cost and ran on."""

    images: list[Image.Image]
    videos: list[VideoClip]
    load_s: float
    pipeline_s: float
    runtime: dict[str, Any]
    """What ran it: worker, device, dtype, weights (demo or real), placement, acceleration, library versions."""


@dataclass(frozen=True)
class OutOfMemory:
    """The device ran out of memory; the worker has already released what the render held."""

    detail: str


@dataclass(frozen=True)
class DeviceFault:
    """The device is poisoned (CUDA error, illegal address): nothing more can run on it in this process."""

    detail: str


@dataclass(frozen=True)
class Cancelled:
    """The render stopped at a step boundary because the step callback asked it to."""


@dataclass(frozen=True)
class Failed:
    """The render failed. `error` is set when the request itself is at fault (a parameter the family refuses,
    a size that never fits): a client-safe error, and a merged call should be retried one request at a time."""

    detail: str
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkerLost:
    """The worker went away mid-render (a Ray actor or its node died): the work never finished anywhere, and the
    device may come back as a new worker; this process is fine."""

    detail: str


@dataclass(frozen=True)
class RankLost:
    """A rank of a gang (server/engine/gang_worker.py) died or the gang could not form: every rank has been
    stopped and the devices are free again; the job goes back to the queue once."""

    detail: str


@dataclass(frozen=True)
class NotSpread:
    """A gang declined the work before starting it (no plan fits it, it needs group offload there, it brings
    LoRAs): the job goes back to the queue to run on one device."""

    detail: str


Outcome = Completed | OutOfMemory | DeviceFault | Cancelled | Failed | WorkerLost | RankLost | NotSpread
