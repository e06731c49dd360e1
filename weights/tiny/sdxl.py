"""Tiny random SDXL base (img2img layout) with the real classes and scheduler config.

The UNet is 4-channel like SDXL base, so the inpaint task runs on the same
components (diffusers blends the masked latents when the UNet has 4 inputs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

from weights.tiny.text_encoders import HIDDEN, clip_text_model, clip_text_model_with_projection
from weights.tiny.tokenizers import clip_tokenizer
from weights.tiny.vae import tiny_vae

# From stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json.
SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def build_sdxl(out_dir: Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny StableDiffusionXLImg2ImgPipeline."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        # 6 micro-conditioning values x 8 + the pooled width of text_encoder_2.
        projection_class_embeddings_input_dim=6 * 8 + HIDDEN,
        cross_attention_dim=2 * HIDDEN,
        norm_num_groups=8,
    )
    pipe = StableDiffusionXLImg2ImgPipeline(
        # SDXL VAE: 4 latent channels, SDXL scale; fp32 decode is not forced on the tiny one.
        vae=tiny_vae(latent_channels=4, scaling_factor=0.13025, force_upcast=False),
        text_encoder=clip_text_model(),
        text_encoder_2=clip_text_model_with_projection(),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
