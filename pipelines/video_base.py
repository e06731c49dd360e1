"""What every image-to-video family shares: frame-count rules, sizing, tiling and output conversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipelines.base import Family, ParamError, RenderParams, Task
from pipelines.memory import MemoryCoefficients

# Clips above this many output pixels x frames decode with VAE tiling, which bounds decoder memory
# by the tile size instead of the clip size (slower, same result up to seam blending).
TILING_THRESHOLD = 480 * 864 * 49
# The decoders pad with reflection, which needs at least two latents along each side of a tile.
_SMALLEST_TILE_LATENTS = 2


def tile_stride(latents: int, tile: int, overlap: int) -> int:
    """Latent stride for tiling one axis of `latents` with tiles of at most `tile` overlapping by `overlap`.

    diffusers starts a tile every `stride` latents until the axis ends, so the last tile is `latents % stride`
    long; at one latent the decoder's reflection padding fails ("Padding size should be less than the
    corresponding input dimension"), which is what a 4:3 clip at 720p hit with the default 448 px stride.
    The largest stride (fewest tiles) whose last tile is not such a sliver wins; one always exists between
    half and all of `tile - overlap` (tests/unit/test_video_units.py checks every length a tier can ask for).
    """
    widest = tile - overlap
    for stride in range(widest, max(1, widest // 2) - 1, -1):
        rest = latents % stride
        if latents <= stride or rest == 0 or rest >= _SMALLEST_TILE_LATENTS:
            return stride
    raise ValueError(f"no tile stride for {latents} latents with {tile}-latent tiles")


@dataclass(frozen=True)
class DecodePlan:
    """How a clip's latents are decoded: whole, or in overlapping spatial tiles (sizes in output pixels)."""

    tiled: bool
    tile: tuple[int, int] = (0, 0)
    """(height, width) of one tile."""
    stride: tuple[int, int] = (0, 0)
    """(height, width) between tile starts; tile - stride is the blended overlap."""


class VideoFamily(Family):
    """An image-to-video family: the first frame comes from the source image."""

    tasks: ClassVar[frozenset[Task]] = frozenset({Task.IMAGE_TO_VIDEO})
    supports_negative_prompt: ClassVar[bool] = True
    frame_step: ClassVar[int]
    """Valid clip lengths are frame_step * k + 1 (the VAE's temporal compression)."""
    supports_audio: ClassVar[bool] = False
    supports_last_frame: ClassVar[bool] = False
    max_frames: ClassVar[int] = 257
    token_patch: ClassVar[int]
    """Pixels per latent token side (VAE spatial compression x the transformer's patch size)."""
    vae_spatial: ClassVar[int]
    """Pixels per latent side in the VAE (its spatial compression, patchify included)."""
    vae_tile_px: ClassVar[int]
    """Largest decode tile side (diffusers' default for the VAE: it bounds decoder memory)."""
    vae_overlap_px: ClassVar[int]
    """Overlap blended between neighbouring tiles (diffusers' default tile less its stride)."""

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients) -> int:
        """Latent tokens through the DiT, plus the 3D VAE decode per output voxel (coefficients in configs/)."""
        c = coeffs
        latent_frames = (params.num_frames - 1) // cls.frame_step + 1
        tokens = latent_frames * (params.height // cls.token_patch) * (params.width // cls.token_patch)
        return batch * tokens * c.bytes_per_token + params.width * params.height * params.num_frames * \
            c.vae_bytes_per_voxel

    @classmethod
    def valid_frames(cls, wanted: float) -> int:
        """The valid frame count nearest `wanted` (at least frame_step + 1)."""
        k = max(1, round((wanted - 1) / cls.frame_step))
        return min(cls.frame_step * k + 1, cls.max_frames - (cls.max_frames - 1) % cls.frame_step)

    @classmethod
    def check(cls, params: RenderParams) -> None:
        super().check(params)
        if params.num_frames < cls.frame_step + 1 or (params.num_frames - 1) % cls.frame_step:
            raise ParamError("duration", f"{cls.name} makes clips of {cls.frame_step}k+1 frames")
        if params.generate_audio and not cls.supports_audio:
            raise ParamError("generate_audio", f"{cls.name} makes silent video")
        if params.num_sources > (2 if cls.supports_last_frame else 1):
            raise ParamError("image_urls", f"{cls.name} takes {'a first and a last' if cls.supports_last_frame else 'one first'} frame")

    def load(self) -> None:
        self._use({"i2v": self._from_pretrained()})

    @staticmethod
    def to_uint8_frames(frames: np.ndarray) -> np.ndarray:
        """diffusers 'np' output (F, H, W, 3) floats in [0, 1] -> uint8."""
        return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    @classmethod
    def decode_plan(cls, params: RenderParams) -> DecodePlan:
        """Tile the VAE decode for long or large clips (memory bounded by the tile, not the clip); decode short
        ones whole, which is faster. Tile strides are chosen per clip so that no tile is a sliver."""
        if params.width * params.height * params.num_frames <= TILING_THRESHOLD:
            return DecodePlan(tiled=False)
        r = cls.vae_spatial
        tile, overlap = cls.vae_tile_px // r, cls.vae_overlap_px // r
        sh, sw = tile_stride(params.height // r, tile, overlap), tile_stride(params.width // r, tile, overlap)
        return DecodePlan(True, ((sh + overlap) * r, (sw + overlap) * r), (sh * r, sw * r))

    def apply_decode_plan(self, vae: Any, plan: DecodePlan) -> None:
        """Set the pipeline's VAE up for `plan` (the settings stay on the shared VAE, so every call sets them)."""
        if not plan.tiled:
            vae.disable_tiling()
            return
        vae.enable_tiling(tile_sample_min_height=plan.tile[0], tile_sample_min_width=plan.tile[1],
                          tile_sample_stride_height=plan.stride[0], tile_sample_stride_width=plan.stride[1])
