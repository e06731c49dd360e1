"""Tiny random FLUX.1 Kontext [dev] with the real classes and the real scheduler config.

Latent channels (16 -> transformer in_channels 64 after 2x2 packing), the 8x VAE
and guidance embedding match the real model, so every code path the server
exercises (packing, size rounding, reference-image tokens) is the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

from weights.tiny.text_encoders import HIDDEN, clip_text_model, t5_encoder
from weights.tiny.tokenizers import clip_tokenizer, t5_tokenizer

# Copied from black-forest-labs/FLUX.1-Kontext-dev scheduler/scheduler_config.json.
KONTEXT_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def flux_vae() -> AutoencoderKL:
    """Four blocks (8x downsampling) and 16 latent channels like the FLUX VAE; no mid attention,
    which would be quadratic in pixels and make 1K demo images slow on a CPU."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def build_flux_kontext(out_dir: Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny FluxKontextPipeline."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=HIDDEN,
        pooled_projection_dim=HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER),
        vae=flux_vae(),
        text_encoder=clip_text_model(),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
