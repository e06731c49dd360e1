"""The contract every model family implements, and the plain data it consumes.

Families know nothing of HTTP or jobs: the engine hands them `RenderSpec`s
(decoded PIL images and numbers) and gets PIL images back. One family instance
is owned by exactly one worker thread, so its diffusers pipelines are never
called from two threads.

torch and diffusers are imported only inside `load`/`run`: the static facts
(tasks, size grid, checks, batch key, memory estimate) serve the HTTP side,
which must start without them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from weights.safetensors_header import folder_bytes_at

if TYPE_CHECKING:
    import torch

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, steps total)."""


class Task(StrEnum):
    """What a render does with its inputs."""

    GENERATE = "generate"  # text only
    EDIT = "edit"  # source image(s) + instruction
    INPAINT = "inpaint"  # source + mask (+ optional reference)
    IMAGE_TO_VIDEO = "image_to_video"  # first frame (+ optional last frame) -> clip


class RenderCancelled(Exception):
    """Raised from a step callback to stop a render at the next step boundary."""


class ParamError(ValueError):
    """A parameter a family cannot accept; `field` names the request field to change."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


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


@dataclass(frozen=True)
class VideoClip:
    """A rendered clip: uint8 frames (F, H, W, 3) and, when made, float audio (channels, samples) in [-1, 1]."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    sample_rate: int = 0


@dataclass(frozen=True)
class RenderSpec:
    """One job's render: its params plus decoded RGB inputs (masks are L)."""

    params: RenderParams
    sources: tuple[Image.Image, ...] = ()
    references: tuple[Image.Image, ...] = ()
    mask: Image.Image | None = None


@dataclass(frozen=True)
class ComponentInfo:
    """One loadable component (transformer, VAE, text encoder...) and its weight bytes at the serving dtype."""

    name: str
    class_name: str
    bytes: int


@dataclass
class RenderResult:
    """Images (or clips) of one spec, in seed order."""

    images: list[Image.Image] = field(default_factory=list)
    videos: list[VideoClip] = field(default_factory=list)


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of a floating dtype."""
    return dtype.itemsize


class Family(ABC):
    """A model family: how to load its weights and turn RenderSpecs into images."""

    name: ClassVar[str]
    pipeline_class: ClassVar[str]
    """The diffusers class the weights are loaded with (recorded on jobs, checked by tests)."""
    size_multiple: ClassVar[int]
    """Output width and height must be multiples of this."""
    tasks: ClassVar[frozenset[Task]]

    def __init__(self, model_dir: Path, device: str, dtype: torch.dtype) -> None:
        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        self.pipelines: dict[str, Any] = {}
        """Loaded diffusers pipelines by role; `load` fills it, sharing modules between roles."""

    def pipeline(self, role: str) -> Any:
        """The loaded pipeline for `role` (e.g. 'edit', 'inpaint'); RuntimeError before `load`."""
        try:
            return self.pipelines[role]
        except KeyError:
            raise RuntimeError(f"{self.name}: no loaded {role!r} pipeline (call load first)") from None

    # ---- static facts, usable before loading -------------------------------------------
    def components(self) -> list[ComponentInfo]:
        """Components named in model_index.json with their bytes at the serving dtype (headers only)."""
        index = json.loads((self.model_dir / "model_index.json").read_text())
        out = []
        for name, spec in sorted(index.items()):
            if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
                continue
            folder = self.model_dir / name
            size = folder_bytes_at(folder, dtype_bytes(self.dtype)) if folder.is_dir() else 0
            out.append(ComponentInfo(name=name, class_name=spec[1], bytes=size))
        return out

    @classmethod
    def check(cls, params: RenderParams) -> None:
        """Raise ParamError for params this family can never run. Called before a job is accepted."""
        if params.task not in cls.tasks:
            raise ParamError("task", f"{cls.name} cannot do {params.task}")
        if params.width % cls.size_multiple or params.height % cls.size_multiple:
            raise ParamError("aspect_ratio", f"{cls.name} needs sizes in multiples of {cls.size_multiple}")
        if params.num_inference_steps < 1:
            raise ParamError("num_inference_steps", "num_inference_steps must be at least 1")

    @classmethod
    def batch_key(cls, params: RenderParams) -> tuple[object, ...]:
        """Fields that must match for two renders to share one pipeline call (prompt and seed may differ)."""
        return (cls.name, params.task, params.width, params.height, params.num_inference_steps,
                params.guidance_scale, params.strength, params.num_sources, params.num_references)

    @classmethod
    @abstractmethod
    def activation_bytes(cls, params: RenderParams, batch: int) -> int:
        """Conservative peak activation memory for `batch` renders like `params` (excludes weights)."""

    # ---- runtime, owned by one worker thread ---------------------------------------------
    @abstractmethod
    def load(self) -> None:
        """Load the weights (safetensors only) onto `self.device`."""

    @abstractmethod
    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        """Render one spec. Deterministic for a given spec, device and dtype."""

    @staticmethod
    def generators(seeds: Sequence[int]) -> list[torch.Generator]:
        """One CPU generator per image: CPU noise is identical on every device, so seeds travel."""
        import torch

        return [torch.Generator("cpu").manual_seed(s) for s in seeds]

    @staticmethod
    def step_callback(on_step: StepCallback, total: int) -> Callable[..., dict[str, object]]:
        """Adapt our progress callback to diffusers' callback_on_step_end."""

        def _cb(_pipe: object, step: int, _t: object, _kwargs: dict[str, object]) -> dict[str, object]:
            on_step(step + 1, total)
            return {}

        return _cb


def fit_within(image: Image.Image, max_area: int, multiple: int) -> Image.Image:
    """Resize to at most `max_area` pixels keeping the aspect ratio, sides rounded down to `multiple`."""
    w, h = image.size
    scale = min(1.0, (max_area / (w * h)) ** 0.5)
    nw = max(multiple, int(w * scale) // multiple * multiple)
    nh = max(multiple, int(h * scale) // multiple * multiple)
    return image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.Resampling.LANCZOS)
