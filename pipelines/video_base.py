"""What every image-to-video family shares: frame-count rules, sizing, tiling and output conversion."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pipelines.base import Family, ParamError, RenderParams, Task
from pipelines.memory import MemoryCoefficients, coefficients

# Clips above this many output pixels x frames decode with VAE tiling, which bounds decoder memory
# by the tile size instead of the clip size (slower, same result up to seam blending).
TILING_THRESHOLD = 480 * 864 * 49


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

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients | None = None) -> int:
        """Latent tokens through the DiT, plus the 3D VAE decode per output voxel (coefficients in configs/)."""
        c = coeffs or coefficients(cls.name)
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

    @classmethod
    def batch_key(cls, params: RenderParams) -> tuple[object, ...]:
        return (*super().batch_key(params), params.num_frames, params.fps, params.generate_audio)

    @classmethod
    def batch_key_names(cls) -> tuple[str, ...]:
        return (*super().batch_key_names(), "frames", "fps", "audio")

    def load(self) -> None:
        self._use({"i2v": self._from_pretrained()})

    @staticmethod
    def to_uint8_frames(frames: np.ndarray) -> np.ndarray:
        """diffusers 'np' output (F, H, W, 3) floats in [0, 1] -> uint8."""
        return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    @staticmethod
    def use_tiling(vae: object, params: RenderParams) -> None:
        """Tile the VAE for long or large clips; keep the faster untiled path for short ones."""
        big = params.width * params.height * params.num_frames > TILING_THRESHOLD
        getattr(vae, "enable_tiling" if big else "disable_tiling")()
