"""Tiny random SDXL base (img2img layout) with the real classes and scheduler config, plus an IP-Adapter.

The UNet is 4-channel like SDXL base, so the inpaint task runs on the same
components (diffusers blends the masked latents when the UNet has 4 inputs).
The IP-Adapter is written where `darkroom weights pull` puts the real one
(`ip_adapter/`, h94 layout: `sdxl_models/ip-adapter_sdxl.safetensors` and
`sdxl_models/image_encoder/`), so both load through the same code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

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
    build_ip_adapter(unet, out_dir / "ip_adapter" / "sdxl_models")
    return out_dir


IMAGE_EMBED_DIM = 32


def build_ip_adapter(unet: UNet2DConditionModel, out_dir: Path) -> None:
    """Write a random IP-Adapter (plain, 4 image tokens) for `unet` and its CLIP image encoder, h94 layout."""
    cross = unet.config.cross_attention_dim
    state: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(cross * 4, IMAGE_EMBED_DIM) * 0.02,
        "image_proj.proj.bias": torch.zeros(cross * 4),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    # diffusers numbers the cross-attention processors 1, 3, 5, ... in attn_processors order (the
    # self-attention ones take the even numbers), which is how h94's checkpoints are keyed.
    widths = list(unet.config.block_out_channels)
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = widths[-1]
        elif name.startswith("up_blocks"):
            hidden = widths[::-1][int(name.split(".")[1])]
        else:
            hidden = widths[int(name.split(".")[1])]
        state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.02
        state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.02
        key += 2
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, out_dir / "ip-adapter_sdxl.safetensors")
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=IMAGE_EMBED_DIM,
    ))
    encoder.save_pretrained(out_dir / "image_encoder", safe_serialization=True)
