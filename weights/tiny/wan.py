"""Tiny random Wan 2.2 image-to-video pipelines (WanImageToVideoPipeline), both real layouts.

* TI2V-5B: one transformer, the Wan 2.2 VAE (48 latent channels, 16x spatial
  with its 2x patchify, 4x temporal) and `expand_timesteps=True`.
* I2V-A14B: two experts (`transformer` for high noise, `transformer_2` for low
  noise, switched at `boundary_ratio`), the Wan 2.1 VAE (16 channels, 8x, 4x).

Compression ratios match the real models, so frame counts (4k+1) and the size
grid the server enforces are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from weights.tiny.text_encoders import HIDDEN
from weights.tiny.tokenizers import t5_tokenizer, t5_vocab_size


def _umt5() -> UMT5EncoderModel:
    cfg = UMT5Config(vocab_size=t5_vocab_size(), d_model=HIDDEN, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return UMT5EncoderModel(cfg).eval()


def _transformer(channels_in: int, channels_out: int) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=channels_in,
        out_channels=channels_out, text_dim=HIDDEN, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )


def _scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift,
                                   num_train_timesteps=1000)


def build_wan_ti2v_5b(out_dir: Path, seed: int = 0) -> Path:
    """Wan 2.2 TI2V-5B layout."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=4, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=t5_tokenizer(), text_encoder=_umt5(), vae=vae, scheduler=_scheduler(5.0),
        transformer=_transformer(48, 48), transformer_2=None, image_encoder=None, image_processor=None,
        boundary_ratio=None, expand_timesteps=True,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_wan_i2v_a14b(out_dir: Path, seed: int = 0) -> Path:
    """Wan 2.2 I2V-A14B layout (two experts, boundary 0.9 as in the real model_index)."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    # I2V input = 16 noise channels + 16 image-latent channels + 4 mask channels.
    pipe = WanImageToVideoPipeline(
        tokenizer=t5_tokenizer(), text_encoder=_umt5(), vae=vae, scheduler=_scheduler(5.0),
        transformer=_transformer(36, 16), transformer_2=_transformer(36, 16), image_encoder=None,
        image_processor=None, boundary_ratio=0.9,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
