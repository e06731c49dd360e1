"""What an ask resolves to before it becomes a job: the task, the tier, the exact output size and the size the
model renders on its grid, the seeds, and the render parameters. Pure functions of the ask, the model's spec and
its family (no I/O, no store, no torch), so every rule here is unit-tested on its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from pipelines.base import Family, RenderParams, Task
from pipelines.video_base import VideoFamily
from server.asks import ImageAsk, VideoAsk
from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, ModelSpec, VideoModelSpec, parse_ratio
from server.engine.sizing import (
    exact_image_size,
    exact_video_size,
    output_size,
    render_size_for,
    video_size,
)
from server.errors import ApiError, ErrorCode
from server.limits import tier_for_video_size

SEED_MAX = 2**32 - 1
DRAFT_TIER = "240p"
CPU_SLOW_SHORT_SIDE = 480
"""Video tiers from this short side up take minutes per clip on a CPU (a warning says so)."""


@dataclass(frozen=True)
class Size:
    """The exact size the client gets and the size the model renders it at (on its grid; then cropped or
    resized to `output`)."""

    output: tuple[int, int]
    render: tuple[int, int]


def seeds(seed: int | None, n: int, draw: Callable[[int], int] = secrets.randbelow) -> tuple[int, ...]:
    """`n` consecutive seeds from `seed` (wrapping at 2**32), or from a random one when none was asked for."""
    base = seed if seed is not None else draw(SEED_MAX + 1)
    return tuple((base + i) % (SEED_MAX + 1) for i in range(n))


def image_task(spec: ModelSpec, fam: type[Family], ask: ImageAsk) -> Task:
    """Generate, edit or inpaint, from the inputs given; 422 for controls the model does not have."""
    if ask.strength is not None and "strength" not in fam.edit_controls():
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{spec.id} does not use strength (its edits are "
                       "instruction-based); remove strength, or add a mask_url where the model supports one",
                       "strength")
    if ask.mask and Task.INPAINT not in fam.tasks:
        raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{spec.id} takes no mask (it edits from the "
                       "instruction alone); remove mask_url or use a model that lists mask_url in editControls",
                       "mask_url")
    task = Task.INPAINT if ask.mask else Task.EDIT if (ask.sources or ask.references) else Task.GENERATE
    if task is Task.INPAINT and not ask.sources:
        raise ApiError(422, ErrorCode.MISSING_FIELD, "a mask needs a source image in image_urls", "image_urls")
    return task


def image_long_side(spec: ModelSpec, fam: type[Family], ask: ImageAsk) -> int:
    """The long side rendered: an exact size's (on the grid), else the quality tier's."""
    if ask.size:
        return max(render_size_for(*ask.size, fam.size_multiple))
    return QUALITY_LONG_SIDE[ask.quality or spec.default_quality]


def image_size(ask: ImageAsk, long_side: int, multiple: int, first_input: tuple[int, int] | None) -> Size:
    """An exact size as asked, or the tier's long side at the ratio asked ('auto': the first input image's, or
    square without one)."""
    if ask.size:
        return Size(ask.size, render_size_for(*ask.size, multiple))
    ratio = (first_input or (1, 1)) if ask.aspect_ratio == "auto" else parse_ratio(ask.aspect_ratio)
    return Size(exact_image_size(long_side, ratio), output_size(long_side, ratio, multiple))


def image_params(spec: ModelSpec, fam: type[Family], ask: ImageAsk, preset: str,
                 draw: Callable[[int], int] = secrets.randbelow) -> RenderParams:
    """The render parameters before the inputs are read: square at the long side, the model's defaults for
    what the ask leaves out (the size and input counts are set once the inputs are decoded)."""
    num_images = ask.num_images or spec.default_num_images
    long_side = image_long_side(spec, fam, ask)
    d = spec.defaults
    return RenderParams(
        task=image_task(spec, fam, ask), prompt=ask.prompt, width=long_side, height=long_side,
        num_images=num_images, seeds=seeds(ask.seed, num_images, draw),
        num_inference_steps=ask.num_inference_steps or d.num_inference_steps,
        guidance_scale=d.guidance_scale if ask.guidance_scale is None else ask.guidance_scale,
        strength=d.strength if ask.strength is None else ask.strength, negative_prompt=ask.negative_prompt,
        preset=preset)


def with_inputs(params: RenderParams, size: Size, sources: int, references: int,
                source_size: tuple[int, int]) -> RenderParams:
    """`params` at `size` with the decoded inputs counted."""
    width, height = size.render
    return replace(params, width=width, height=height, num_sources=sources, num_references=references,
                   source_size=source_size)


def device_resolution(spec: VideoModelSpec, cpu_only: bool) -> str:
    """The tier a request without a resolution gets: the model's default, or the draft tier on a CPU-only server
    (a default-size clip takes many minutes there)."""
    return DRAFT_TIER if cpu_only and DRAFT_TIER in spec.resolutions else spec.defaults.resolution


def video_tier(spec: VideoModelSpec, ask: VideoAsk, cpu_only: bool) -> tuple[str, tuple[str, ...]]:
    """The resolution tier to render and the warnings it brings. An exact size picks the smallest tier that
    covers it; on a CPU an unasked resolution drops to the draft tier (a default clip takes many minutes)."""
    default = spec.defaults.resolution
    warnings: tuple[str, ...] = ()
    resolution = ask.resolution or default
    if ask.size is not None:
        resolution = tier_for_video_size(spec, ask)
        tier_short = RESOLUTION_SHORT_SIDE[resolution]
        if min(ask.size) > tier_short:
            warnings += ((f"{ask.size_field}: {spec.id} renders at most {resolution}; the clip was rendered at "
                          f"{tier_short} px on its short side and upscaled to {ask.size[0]}x{ask.size[1]}"),)
    elif ask.resolution is None and device_resolution(spec, cpu_only) != default:
        resolution = device_resolution(spec, cpu_only)
        warnings += ((f"rendering on the CPU: no resolution was given, so the {DRAFT_TIER} draft tier was used "
                      f"instead of the default {default} (which takes many minutes here); ask for a resolution to "
                      "override"),)
    if cpu_only and RESOLUTION_SHORT_SIDE.get(resolution, 0) >= CPU_SLOW_SHORT_SIDE:
        warnings += ((f"rendering on the CPU: a {resolution} clip takes minutes; the {DRAFT_TIER} draft tier is "
                      "much faster"),)
    return resolution, warnings


def clip_size(ask: VideoAsk, resolution: str, multiple: int, first_frame: tuple[int, int]) -> Size:
    """An exact clip size as asked, or the tier's short side at the ratio asked ('auto': the first frame's)."""
    if ask.size is not None:
        short = min(min(ask.size), RESOLUTION_SHORT_SIDE[resolution])  # above the top tier: render there, upscale
        return Size(ask.size, video_size(short, ask.size, multiple))
    short = RESOLUTION_SHORT_SIDE[resolution]
    ratio = first_frame if ask.aspect_ratio == "auto" else parse_ratio(ask.aspect_ratio)
    return Size(exact_video_size(short, ratio), video_size(short, ratio, multiple))


@dataclass(frozen=True)
class ClipTiming:
    """A clip's length and rate as resolved from the ask and the model's defaults."""

    duration: int
    fps: int
    audio: bool


def clip_timing(spec: VideoModelSpec, fam: type[VideoFamily], ask: VideoAsk) -> ClipTiming:
    """Duration and fps as asked or the model's defaults; audio as asked or, unasked, the model's default where
    the running family can make it."""
    d = spec.defaults
    audio = (d.generate_audio and fam.supports_audio) if ask.generate_audio is None else ask.generate_audio
    return ClipTiming(d.duration if ask.duration is None else ask.duration, ask.fps or d.fps, audio)


def video_params(spec: VideoModelSpec, fam: type[VideoFamily], ask: VideoAsk, size: Size, timing: ClipTiming,
                 frames: int, preset: str, draw: Callable[[int], int] = secrets.randbelow) -> RenderParams:
    """The render parameters of an image-to-video clip."""
    d = spec.defaults
    width, height = size.render
    return RenderParams(
        task=Task.IMAGE_TO_VIDEO, prompt=ask.prompt, width=width, height=height, num_images=1,
        seeds=seeds(ask.seed, 1, draw), num_inference_steps=ask.num_inference_steps or d.num_inference_steps,
        guidance_scale=d.guidance_scale if ask.guidance_scale is None else ask.guidance_scale, strength=1.0,
        num_sources=frames, negative_prompt=ask.negative_prompt,
        num_frames=fam.valid_frames(timing.duration * timing.fps), fps=float(timing.fps),
        generate_audio=timing.audio, preset=preset)
