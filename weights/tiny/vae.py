"""The tiny AutoencoderKL every demo image family uses."""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL


def tiny_vae(latent_channels: int, **config: Any) -> AutoencoderKL:
    """Four blocks, so 8x downsampling like the real VAEs, with the family's latent channels and scaling.

    No mid-block attention: it is quadratic in pixels and would make 1K demo
    images slow on a CPU, while changing nothing the server depends on.
    """
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        mid_block_add_attention=False,
        **config,
    )
