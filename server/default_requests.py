"""The request each served id gets with nothing but a prompt (and a source where it edits): what `darkroom doctor`,
the variant planner and the README's GPU table size their estimates by."""

from __future__ import annotations

from typing import Any


def default_params(spec: Any, fam: Any, draft: bool = False, tier: str | None = None) -> Any:
    """A request at the id's defaults (an edit of one source when it edits), at the default tier, square; a clip at
    the draft tier with `draft` (what a CPU-only server gives a request without a resolution); at `tier` (a
    quality or resolution the id lists) when given."""
    from pipelines.base import RenderParams, Task
    from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, VideoModelSpec
    from server.resolve import DRAFT_TIER

    d = spec.defaults
    if isinstance(spec, VideoModelSpec):
        tier = tier or (DRAFT_TIER if draft and DRAFT_TIER in spec.resolutions else d.resolution)
        short = RESOLUTION_SHORT_SIDE[tier]
        width, height = short * 16 // 9 // 16 * 16, short
        return RenderParams(task=Task.IMAGE_TO_VIDEO, prompt="doctor", width=width, height=height, num_images=1,
                            seeds=(0,), num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                            strength=1.0, num_sources=1, num_frames=fam.valid_frames(d.duration * d.fps),
                            fps=float(d.fps))
    side = QUALITY_LONG_SIDE[tier or spec.default_quality]
    edits = spec.max_source_images > 0
    return RenderParams(task=Task.EDIT if edits else Task.GENERATE, prompt="doctor", width=side, height=side,
                        num_images=spec.default_num_images, seeds=(0,) * spec.default_num_images,
                        num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                        strength=d.strength, num_sources=1 if edits else 0)


def tiers_below_default(spec: Any) -> list[str]:
    """The id's listed tiers smaller than its default, largest first (what a smaller card may fall back to)."""
    from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, VideoModelSpec

    if isinstance(spec, VideoModelSpec):
        sides, listed, default = RESOLUTION_SHORT_SIDE, spec.resolutions, spec.defaults.resolution
    else:
        sides, listed, default = QUALITY_LONG_SIDE, spec.quality, spec.default_quality
    return sorted((t for t in listed if sides[t] < sides[default]), key=lambda t: -sides[t])
