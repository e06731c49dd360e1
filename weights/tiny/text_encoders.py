"""Tiny random text encoders shared by the demo builders (real transformers classes)."""

from __future__ import annotations

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from weights.tiny.tokenizers import CLIP_BOS_ID, CLIP_EOS_ID, CLIP_VOCAB_SIZE, t5_vocab_size

HIDDEN = 32


def _clip_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,
        pad_token_id=CLIP_EOS_ID,
        projection_dim=HIDDEN,
        hidden_act="gelu",
    )


def clip_text_model() -> CLIPTextModel:
    """CLIP-L stand-in: pooled output width == HIDDEN."""
    return CLIPTextModel(_clip_config()).eval()


def clip_text_model_with_projection() -> CLIPTextModelWithProjection:
    """OpenCLIP-bigG stand-in (SDXL's second encoder): text_embeds width == HIDDEN."""
    return CLIPTextModelWithProjection(_clip_config()).eval()


def t5_encoder() -> T5EncoderModel:
    """T5-XXL stand-in with the tiny unigram vocabulary."""
    cfg = T5Config(
        vocab_size=t5_vocab_size(),
        d_model=HIDDEN,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg).eval()
