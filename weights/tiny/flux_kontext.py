"""Tiny random FLUX.1 Kontext [dev] with the real classes and the real scheduler config.

Latent channels (16 -> transformer in_channels 64 after 2x2 packing), the 8x VAE
and guidance embedding match the real model, so every code path the server
exercises (packing, size rounding, reference-image tokens) is the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

from weights.tiny.text_encoders import HIDDEN, clip_text_model, t5_encoder
from weights.tiny.tokenizers import clip_tokenizer, t5_tokenizer
from weights.tiny.vae import tiny_vae

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
        # FLUX VAE: 16 latent channels, its shift and scale, no quant convs.
        vae=tiny_vae(latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                     use_post_quant_conv=False),
        text_encoder=clip_text_model(),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
