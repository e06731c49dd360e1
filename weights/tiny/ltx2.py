"""Tiny random LTX-2 image-to-video-with-audio pipeline (LTX2ImageToVideoPipeline).

The video VAE keeps LTX-2's real compression (4x patchify then 8x: 32x spatial,
8x temporal), so frame counts (8k+1) and the 32-pixel size grid are the real
ones. Text goes through a tiny Gemma 3 and the LTX-2 text connectors; audio
through the audio VAE and vocoder, as in the real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2ImageToVideoPipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from weights.tiny.tokenizers import gemma_tokenizer

TEXT_HIDDEN = 32
TEXT_LAYERS = 2


def _gemma3(vocab_size: int) -> Gemma3ForConditionalGeneration:
    cfg = Gemma3Config(
        text_config={"vocab_size": vocab_size, "hidden_size": TEXT_HIDDEN, "intermediate_size": 37,
                     "num_hidden_layers": TEXT_LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "head_dim": 8, "max_position_embeddings": 1024, "pad_token_id": 0, "eos_token_id": 1,
                     "bos_token_id": 2, "sliding_window": 64},
        vision_config={"hidden_size": 16, "intermediate_size": 37, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4,
        boi_token_index=4, eoi_token_index=4, image_token_index=4,
    )
    return Gemma3ForConditionalGeneration(cfg).eval()


def build_ltx2(out_dir: Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny LTX2ImageToVideoPipeline."""
    torch.manual_seed(seed)
    tokenizer = gemma_tokenizer()
    text_encoder = _gemma3(len(tokenizer))
    transformer = LTX2VideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
        caption_channels=TEXT_HIDDEN, rope_double_precision=False, rope_type="split",
    )
    connectors = LTX2TextConnectors(
        caption_channels=TEXT_HIDDEN, text_proj_in_factor=TEXT_LAYERS + 1,
        # LTX-2.0 mode needs heads x head_dim == caption_channels.
        video_connector_num_attention_heads=4, video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
    )
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8), layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False), upsample_residual=(False, False, False),
        upsample_factor=(1, 1, 1), timestep_conditioning=False, patch_size=4, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
        # Three of the four down blocks scale space and three scale time (the real layout); the default
        # ratio formula counts all four, so state the real ratios.
        spatial_compression_ratio=32, temporal_compression_ratio=8,
    )
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    )
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins, hidden_channels=32,
        out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2], resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=16000,
    )
    pipe = LTX2ImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
        tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
