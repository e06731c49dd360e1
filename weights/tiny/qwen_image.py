"""Tiny random Qwen-Image-Edit-2511 (QwenImageEditPlusPipeline) with the real latent layout.

16 latent channels (transformer in_channels 64 after 2x2 packing) and the 8x
Qwen-Image VAE; a tiny Qwen2.5-VL text encoder whose special-token ids come
from the offline tokenizer; the Qwen2-VL processor needs pipelines.torchvision_shims.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor

from pipelines import torchvision_shims
from weights.tiny.tokenizers import qwen_tokenizer

HIDDEN = 16


def build_qwen_image_edit(out_dir: Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny QwenImageEditPlusPipeline."""
    torchvision_shims.apply_qwen2vl()
    torch.manual_seed(seed)
    tok = qwen_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": HIDDEN, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tok),
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
                     "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>"), "bos_token_id": None},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": HIDDEN},
        **ids,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=HIDDEN, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        zero_cond_t=True,  # as Qwen-Image-Edit-2511: conditioning tokens are modulated at t = 0
    )
    z_dim = 16
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim,
                                 latents_std=[1.0] * z_dim)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok)
    pipe = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                  max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192),
        vae=vae, text_encoder=text_encoder, tokenizer=tok, processor=processor, transformer=transformer,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
