"""Tiny LoRA adapters made with peft on a family's (demo) weights and saved the way trainers do: diffusers' own
`save_lora_weights` (PEFT layout with its adapter config in the header) or kohya's layout. The tests and
benchmarks/lora.py use them; peft comes with the test extra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_adapter(family: Any, weights_dir: Path, out_dir: Path, seed: int, rank: int = 4, alpha: int = 8,
                 strength: float = 20.0, layout: str = "diffusers") -> Path:
    """A LoRA for `family` (its first denoiser) with random, deliberately strong updates; returns the file."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    component = family.denoisers[0]
    index = json.loads((weights_dir / "model_index.json").read_text())
    denoiser = getattr(diffusers, index[component][1]).from_pretrained(weights_dir / component)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False)
    denoiser.add_adapter(config, adapter_name="made")
    state = {k: v * strength ** 0.5 for k, v in get_peft_model_state_dict(denoiser, adapter_name="made").items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout == "diffusers":
        getattr(diffusers, family.pipeline_class).save_lora_weights(
            out_dir, **{f"{component}_lora_layers": state, f"{component}_lora_adapter_metadata": config.to_dict()})
        return out_dir / "pytorch_lora_weights.safetensors"
    assert layout == "kohya"
    kohya: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, half = key.rsplit(".lora_", 1)
        flat = "lora_unet_" + module.replace(".", "_")
        kohya[f"{flat}.lora_down.weight" if half.startswith("A") else f"{flat}.lora_up.weight"] = tensor.contiguous()
        kohya[f"{flat}.alpha"] = torch.tensor(float(alpha))
    path = out_dir / "kohya.safetensors"
    save_file(kohya, path)
    return path
