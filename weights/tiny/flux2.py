"""Tiny random FLUX.2 pipelines with the real latent layout: [klein] 4B and [dev].

32 latent channels (transformer in_channels 128 after 2x2 packing) and an 8x
VAE as in FLUX.2. Each text encoder has just enough layers for the hidden
states its pipeline reads and concatenates (joint dim = 3 x hidden): Qwen3 for
klein (9, 18, 27), Mistral 3 for dev (10, 20, 30). FLUX.2 [dev]'s "tokenizer"
is a PixtralProcessor, which needs pipelines.torchvision_shims without torchvision.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from transformers import Qwen3Config, Qwen3ForCausalLM

from pipelines import torchvision_shims
from weights.tiny.tokenizers import mistral_tokenizer, qwen_tokenizer

QWEN_HIDDEN = 16
QWEN_LAYERS = 28


def build_flux2_klein(out_dir: Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny Flux2KleinPipeline."""
    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=QWEN_HIDDEN, intermediate_size=16, num_hidden_layers=QWEN_LAYERS, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), bos_token_id=None,
    )).eval()
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * QWEN_HIDDEN, timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )
    pipe = Flux2KleinPipeline(scheduler=_scheduler(), vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


MISTRAL_HIDDEN = 16
MISTRAL_LAYERS = 30


def build_flux2_dev(out_dir: Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny Flux2Pipeline (FLUX.2 [dev] layout)."""
    torchvision_shims.apply_pixtral()  # before importing PixtralProcessor, which is a placeholder until then
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessor,
        PixtralProcessor,
        PixtralVisionConfig,
    )

    torch.manual_seed(seed)
    tokenizer = mistral_tokenizer()
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size=16),
                                 tokenizer=tokenizer, patch_size=16, spatial_merge_size=2,
                                 chat_template=tokenizer.chat_template)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=MistralConfig(
            hidden_size=MISTRAL_HIDDEN, intermediate_size=16, num_hidden_layers=MISTRAL_LAYERS, num_attention_heads=2,
            num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id),
        vision_config=PixtralVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, head_dim=8, image_size=64, patch_size=16),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
        projector_hidden_act="gelu", vision_feature_layer=-1,
    )).eval()
    # [dev] is guidance-distilled: the guidance scale enters as an embedding, not as a second pass.
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * MISTRAL_HIDDEN, timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True,
    )
    pipe = Flux2Pipeline(scheduler=_scheduler(), vae=_vae(), text_encoder=text_encoder, tokenizer=processor,
                         transformer=transformer)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def _vae() -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=32, norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False,
    )


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)
