"""What a dialect asks for, in darkroom's own terms: the unresolved request (model id, prompt, inputs as URLs or
bytes, tiers and ratios) before the service resolves it into a `GenerationRequest`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageInput:
    """One input image as the client sent it: a URL / data URL, or uploaded bytes. `field` names it in errors."""

    field: str
    url: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class LoraRef:
    """One LoRA adapter a request names: a library id or a URL, and its strength. `field` names it in errors."""

    field: str
    id: str | None = None
    url: str | None = None
    scale: float = 1.0
    data: bytes | None = None
    """The file itself when the dialect already holds it (a file uploaded to this server's files API)."""


@dataclass(frozen=True)
class Ask:
    """What every ask has: the model, the instruction, seed and sampler overrides, and bookkeeping."""

    model: str
    prompt: str
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    warnings: tuple[str, ...] = ()
    priority: int = 0
    size: tuple[int, int] | None = None
    """An exact output size (dialects that speak in WxH); replaces the tier and the aspect ratio."""
    size_field: str = "size"
    webhook: dict[str, Any] | None = None
    """A checked webhook (Webhooks.prepare), stored in the job's own transaction."""
    dialect_note: dict[str, Any] | None = None
    """What a dialect needs later to answer about the job in its own terms, stored with the job."""
    loras: tuple[LoraRef, ...] = ()
    """LoRA adapters applied to the denoiser (up to MAX_LORAS)."""
    previews: bool = False
    """Make live previews as the render goes (streams and GET .../preview show them)."""
    start_by: float | None = None
    """Epoch seconds by which the job must have started (a client's start deadline)."""
    no_retry: bool = False
    """Fail at the first failure around the render instead of retrying."""


@dataclass(frozen=True)
class ImageAsk(Ask):
    """A request for images."""

    sources: tuple[ImageInput, ...] = ()
    references: tuple[ImageInput, ...] = ()
    mask: ImageInput | None = None
    aspect_ratio: str = "auto"
    quality: str | None = None
    num_images: int | None = None
    num_images_field: str = "num_images"
    """The dialect's name for num_images (n, max_images...), named in errors."""
    output_format: str = "png"
    strength: float | None = None


@dataclass(frozen=True)
class VideoAsk(Ask):
    """A request for an image-to-video clip."""

    frames: tuple[ImageInput, ...] = ()
    duration: int | None = None
    resolution: str | None = None
    aspect_ratio: str = "auto"
    fps: int | None = None
    continues: str | None = None
    """An extension: the output file of the finished clip this one continues (the result is the two stitched)."""
    continues_upload: bool = False
    """`continues` is an uploaded clip stored for this job only (removed once stitched)."""
    generate_audio: bool | None = None
