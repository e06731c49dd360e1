"""Full-size pipelines with random weights, in the real on-disk layout, for measuring on a GPU that has no weights.

Compute and memory do not depend on the weights' values, so a checkpoint built from the real configs with random
values measures what the real one would (issue 4's calibration, issue 8's step times) on a machine that cannot
download anything. Each family's folder starts as a copy of its demo build (tokenizers, scheduler, processor,
model_index.json: token ids only index embeddings) and every model component is replaced by one built from the
published config. The folder is marked (`RANDOM_MARKER`) and carries no lock file, so the server never takes it
for pulled weights; `python -m benchmarks.calibrate --weights-path DIR` names it explicitly.

    python -m weights.full_size flux-kontext --out /scratch/kontext-full     # then calibrate on it

Configs are written here for FLUX.1 Kontext, SDXL, FLUX.2 [klein] 4B, Qwen-Image-Edit-2511 and Wan 2.2 TI2V-5B;
FLUX.2 [dev], Wan 2.2 I2V-A14B and LTX-2 need theirs added (and more disk and GPU memory than one 80 GB card has).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.config import DarkroomConfig

RANDOM_MARKER = ".darkroom-random-full-size"

# A component whose layer count the pipeline depends on (hidden states read by index): `depth` leaves it whole.
_FULL_DEPTH = "_full_depth"

_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768, "hidden_act": "quick_gelu"}
_CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
              "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280, "hidden_act": "gelu"}
_T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
           "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "is_encoder_decoder": False,
           "use_cache": False, "tie_word_embeddings": False}
_VAE_4_BLOCKS = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                 "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
                 "sample_size": 1024, "force_upcast": True, "mid_block_add_attention": True}

# family -> component -> (library, class, the published config's size-defining fields)
FULL_CONFIGS: dict[str, dict[str, tuple[str, str, dict[str, Any]]]] = {
    "flux-kontext": {  # black-forest-labs/FLUX.1-Kontext-dev
        "transformer": ("diffusers", "FluxTransformer2DModel", {
            "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}),
        "vae": ("diffusers", "AutoencoderKL", {**_VAE_4_BLOCKS, "latent_channels": 16, "scaling_factor": 0.3611,
                                               "shift_factor": 0.1159, "use_quant_conv": False,
                                               "use_post_quant_conv": False}),
        "text_encoder": ("transformers", "CLIPTextModel", _CLIP_L),
        "text_encoder_2": ("transformers", "T5EncoderModel", _T5_XXL),
    },
    "flux2-klein": {  # black-forest-labs/FLUX.2-klein-4B
        "transformer": ("diffusers", "Flux2Transformer2DModel", {
            "patch_size": 1, "in_channels": 128, "num_layers": 5, "num_single_layers": 20, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 7680, "timestep_guidance_channels": 256,
            "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000, "eps": 1e-6,
            "guidance_embeds": False}),
        "vae": ("diffusers", "AutoencoderKLFlux2", {
            **{k: v for k, v in _VAE_4_BLOCKS.items() if k != "force_upcast"}, "latent_channels": 32,
            "patch_size": [2, 2], "use_quant_conv": True,
            "use_post_quant_conv": True}),
        # The pipeline stacks hidden states of layers 9, 18 and 27: this encoder keeps its depth under `depth`.
        "text_encoder": ("transformers", "Qwen3ForCausalLM", {  # Qwen/Qwen3-4B
            _FULL_DEPTH: True, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
            "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True}),
    },
    "qwen-image-edit": {  # Qwen/Qwen-Image-Edit-2511
        "transformer": ("diffusers", "QwenImageTransformer2DModel", {
            "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False,
            "axes_dims_rope": [16, 56, 56], "zero_cond_t": True}),
        "vae": ("diffusers", "AutoencoderKLQwenImage", {
            "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
            "temperal_downsample": [False, True, True]}),
        "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration", {  # Qwen2.5-VL-7B-Instruct
            "tie_word_embeddings": False,
            "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                            "rms_norm_eps": 1e-6, "max_position_embeddings": 128000,
                            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24], "rope_type": "default"},
                            "rope_theta": 1000000.0},
            "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                              "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                              "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                              "in_channels": 3, "hidden_act": "silu"}}),
    },
    "wan2.2-ti2v-5b": {  # Wan-AI/Wan2.2-TI2V-5B-Diffusers
        "transformer": ("diffusers", "WanTransformer3DModel", {
            "patch_size": [1, 2, 2], "num_attention_heads": 24, "attention_head_dim": 128, "in_channels": 48,
            "out_channels": 48, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 14336, "num_layers": 30,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}),
        # latents_mean/std only shift and scale latents; their length must be z_dim.
        "vae": ("diffusers", "AutoencoderKLWan", {
            "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "attn_scales": [], "temperal_downsample": [False, True, True], "in_channels": 12, "out_channels": 12,
            "patch_size": 2, "scale_factor_spatial": 16, "scale_factor_temporal": 4, "is_residual": True,
            "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}),
        "text_encoder": ("transformers", "UMT5EncoderModel", {**_T5_XXL, "vocab_size": 256384}),
    },
    "sdxl": {  # stabilityai/stable-diffusion-xl-base-1.0
        "unet": ("diffusers", "UNet2DConditionModel", {
            "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10],
            "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048, "use_linear_projection": True,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32}),
        "vae": ("diffusers", "AutoencoderKL", {**_VAE_4_BLOCKS, "latent_channels": 4, "scaling_factor": 0.13025}),
        "text_encoder": ("transformers", "CLIPTextModel", _CLIP_L),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", _CLIP_BIGG),
    },
}

# Fields that count layers: capped by `depth` so a test can check that full widths line up on a small machine.
_DEPTH_FIELDS = ("num_layers", "num_single_layers", "num_hidden_layers", "depth")
# Token ids come from the demo build's tokenizers, so the configs take theirs.
_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "image_token_id",
                    "video_token_id", "vision_start_token_id", "vision_end_token_id")


def build_component(library: str, class_name: str, fields: dict[str, Any], tiny_config: dict[str, Any] | None = None,
                    depth: int | None = None) -> Any:
    """One model from its size-defining fields (and the demo build's token ids), on the current default device."""
    fields = dict(fields)
    if depth is not None and not fields.get(_FULL_DEPTH):
        fields = _capped(fields, depth)
    fields.pop(_FULL_DEPTH, None)
    if library == "diffusers":
        import diffusers

        return getattr(diffusers, class_name).from_config(fields)
    import transformers

    model_class = getattr(transformers, class_name)
    ids = {k: v for k, v in (tiny_config or {}).items() if k in _TOKEN_ID_FIELDS and v is not None}
    return model_class(model_class.config_class(**{**ids, **fields}))


def _capped(fields: dict[str, Any], depth: int) -> dict[str, Any]:
    """`fields` with every layer count (nested configs included) at most `depth`."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            out[key] = _capped(value, depth)
        elif key in _DEPTH_FIELDS and isinstance(value, int):
            out[key] = min(value, depth)
        elif key == "transformer_layers_per_block":
            out[key] = [min(n, depth) for n in value]
        else:
            out[key] = value
    return out


@contextmanager
def _building(device: str, dtype: Any) -> Iterator[None]:
    """Parameters are created on `device` in `dtype` directly (a 12B model never exists in fp32 on the host)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def parameter_counts(family: str) -> dict[str, int]:
    """Parameters per component of the full-size family, built on the meta device (no memory, no values)."""
    import torch

    out = {}
    with _building("meta", torch.float32):
        for name, (library, class_name, fields) in FULL_CONFIGS[family].items():
            model = build_component(library, class_name, fields)
            out[name] = sum(p.numel() for p in model.parameters())
    return out


def build_full_size(family: str, demo_folder: Path, out_dir: Path, device: str = "cpu", dtype: Any = None,
                    depth: int | None = None) -> Path:
    """Copy the family's demo build to `out_dir` and replace each model component with a full-size random one,
    saved as safetensors. `depth` caps layer counts (a shape check, not a measurement)."""
    import torch

    if family not in FULL_CONFIGS:
        raise KeyError(f"no full-size configs for {family!r}; written for: {', '.join(sorted(FULL_CONFIGS))}")
    dtype = dtype or torch.bfloat16
    if out_dir.exists():
        shutil.rmtree(out_dir)
    # Add-ons (SDXL's IP-Adapter) are sized for the demo model's widths: a full-size run goes without them.
    shutil.copytree(demo_folder, out_dir, ignore=shutil.ignore_patterns("ip_adapter", "image_encoder"))
    for name, (library, class_name, fields) in FULL_CONFIGS[family].items():
        tiny_config = json.loads((out_dir / name / "config.json").read_text())
        shutil.rmtree(out_dir / name)
        with _building(device, dtype):
            model = build_component(library, class_name, fields, tiny_config, depth)
        model.save_pretrained(out_dir / name, safe_serialization=True)
        del model
    (out_dir / RANDOM_MARKER).write_text(json.dumps({"family": family, "depth": depth, "values": "random"}))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    from weights.demo import build_demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FULL_CONFIGS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda:0", help="where parameters are created (cuda:N is fastest)")
    parser.add_argument("--demo-dir", type=Path, default=Path("darkroom-data/demo-weights"))
    args = parser.parse_args(argv)
    entry = next(e for e in DarkroomConfig.packaged().manifest.values() if e.family == args.family)
    demo = build_demo(entry, args.demo_dir)
    out = build_full_size(args.family, demo, args.out, args.device)
    print(f"wrote {out} (random values, full-size {args.family})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
