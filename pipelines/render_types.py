"""The plain data a family consumes and returns: the task, the render parameters, the spec with decoded images,
the result, and the errors a family raises about parameters. No torch at import (the HTTP side uses these)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


class Task(StrEnum):
    """What a render does with its inputs."""

    GENERATE = "generate"  # text only
    EDIT = "edit"  # source image(s) + instruction
    INPAINT = "inpaint"  # source + mask (+ optional reference)
    IMAGE_TO_VIDEO = "image_to_video"  # first frame (+ optional last frame) -> clip


class RenderCancelled(Exception):
    """Raised from a step callback to stop a render at the next step boundary."""


class ParamError(ValueError):
    """A parameter a family cannot accept; `field` names the request field to change.

    `unsupported` marks a feature the family does not have at all (rather than a bad value).
    """

    def __init__(self, field_name: str, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message
        self.unsupported = unsupported


@dataclass(frozen=True)
class AdapterUse:
    """One LoRA adapter on a render: its content hash and the strength it is applied with."""

    sha256: str
    scale: float = 1.0


@dataclass(frozen=True)
class RenderParams:
    """Everything about a render except the pixels: what the batch key and checks look at."""

    task: Task
    prompt: str
    width: int
    height: int
    num_images: int
    seeds: tuple[int, ...]
    num_inference_steps: int
    guidance_scale: float
    strength: float
    num_sources: int = 0
    num_references: int = 0
    negative_prompt: str | None = None
    # Video only: frame count (already valid for the family), frames per second, and whether to make audio.
    num_frames: int = 0
    fps: float = 0.0
    generate_audio: bool = False
    prompts: tuple[str, ...] = ()
    """Per-image prompts when several requests share one call (len == num_images); empty otherwise."""
    negative_prompts: tuple[str | None, ...] = ()
    """Per-image negative prompts of a merged call (len == num_images); empty otherwise."""
    preset: str = ""
    """The acceleration preset the model id runs with (configs/acceleration.toml): cache settings differ by it."""
    source_size: tuple[int, int] = (0, 0)
    """The first source image's (width, height), for families whose batches depend on it."""
    loras: tuple[AdapterUse, ...] = ()
    """The request's LoRA adapters (every image of a one-request call uses them)."""
    image_loras: tuple[tuple[AdapterUse, ...], ...] = ()
    """Per-image adapters of a merged call (len == num_images); empty otherwise. Requests with different adapters
    share one call: each image gets its own (pipelines/lora_runtime.py)."""

    def adapters_per_image(self) -> tuple[tuple[AdapterUse, ...], ...]:
        """Each image's adapters: one entry when every image uses the same ones (also when there are none)."""
        if self.image_loras and len(set(self.image_loras)) > 1:
            return self.image_loras
        return (self.image_loras[0],) if self.image_loras else (self.loras,)

    def prompt_kwargs(self) -> dict[str, object]:
        """`prompt` and `num_images_per_prompt` for a diffusers call, for one request or a merged batch."""
        if self.prompts:
            return {"prompt": list(self.prompts), "num_images_per_prompt": 1}
        return {"prompt": self.prompt, "num_images_per_prompt": self.num_images}

    def negative_kwarg(self, default: str | None = None) -> str | list[str] | None:
        """The negative prompt; per image for a merged call (requests without one get `default`, or "")."""
        if self.prompts:
            negatives = self.negative_prompts or (self.negative_prompt,) * self.num_images
            if all(n is None for n in negatives) and default is None:
                return None
            return [n if n is not None else (default or "") for n in negatives]
        return self.negative_prompt if self.negative_prompt is not None else default


@dataclass(frozen=True)
class VideoClip:
    """A rendered clip: uint8 frames (F, H, W, 3) and, when made, float audio (channels, samples) in [-1, 1]."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    sample_rate: int = 0


@dataclass(frozen=True)
class RenderSpec:
    """One render: its params plus decoded RGB inputs (masks are L).

    In a merged call (several requests in one pipeline call: `params.prompts` is set) the inputs are per image:
    `params.num_sources` sources and `params.num_references` references for each image in image order, and one
    entry of `masks` per image. Otherwise every image of the request uses `sources`, `references` and `mask`.
    """

    params: RenderParams
    sources: tuple[Image.Image, ...] = ()
    references: tuple[Image.Image, ...] = ()
    mask: Image.Image | None = None
    masks: tuple[Image.Image, ...] = ()

    @property
    def merged(self) -> bool:
        """Whether this is several requests' images in one call (inputs per image)."""
        return bool(self.params.prompts)

    def image_inputs(self, i: int) -> tuple[tuple[Image.Image, ...], tuple[Image.Image, ...], Image.Image | None]:
        """(sources, references, mask) of image `i`."""
        if not self.merged:
            return self.sources, self.references, self.mask
        ns, nr = self.params.num_sources, self.params.num_references
        return (self.sources[i * ns:(i + 1) * ns], self.references[i * nr:(i + 1) * nr],
                self.masks[i] if self.masks else None)

    def images(self, start: int, stop: int) -> RenderSpec:
        """The part of this render that makes images [start, stop) (one pipeline call of a chunked request)."""
        p = self.params
        sub = replace(p, num_images=len(p.seeds[start:stop]), seeds=p.seeds[start:stop], prompts=p.prompts[start:stop],
                      negative_prompts=p.negative_prompts[start:stop], image_loras=p.image_loras[start:stop])
        if not self.merged:
            return replace(self, params=sub)
        ns, nr = p.num_sources, p.num_references
        return RenderSpec(sub, self.sources[start * ns:stop * ns], self.references[start * nr:stop * nr],
                          masks=self.masks[start:stop])


@dataclass(frozen=True)
class ComponentInfo:
    """One loadable component (transformer, VAE, text encoder...) and its weight bytes at the serving dtype and
    weight variant."""

    name: str
    class_name: str
    bytes: int
    kind: str = "other"
    """denoiser | encoder | other: what a weight variant does to it (pipelines/variants.py)."""


@dataclass
class RenderResult:
    """Images (or clips) of one spec, in seed order."""

    images: list[Image.Image] = field(default_factory=list)
    videos: list[VideoClip] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    """How the call ran: full denoiser passes, the step cache in force (for the job's runtime record)."""


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of a floating dtype."""
    return dtype.itemsize
