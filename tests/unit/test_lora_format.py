"""LoRA files read from their header alone: pickles and broken files refused before anything is parsed, the layout
told from the keys, and the family found by matching layer names and shapes against weights headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save, save_file

from pipelines.lora_format import FamilyLayers, LoraFormatError, denoiser_layers, inspect, refuse_pickle_name


def _peft(layers: dict[str, tuple[int, int]], rank: int = 4, prefix: str = "transformer.") -> bytes:
    tensors = {}
    for name, (out_f, in_f) in layers.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = np.zeros((rank, in_f), np.float32)
        tensors[f"{prefix}{name}.lora_B.weight"] = np.zeros((out_f, rank), np.float32)
    return save(tensors)


FLUXISH = {"transformer_blocks.0.attn.to_q": (32, 32), "transformer_blocks.0.attn.to_out.0": (32, 32)}


def test_pickles_are_refused_by_name_and_by_content() -> None:
    for name in ("a.ckpt", "b.pt", "c.bin", "d.PTH"):
        with pytest.raises(LoraFormatError) as exc:
            refuse_pickle_name(name)
        assert exc.value.code == "unsupported_format"
    refuse_pickle_name("fine.safetensors")
    for data in (b"PK\x03\x04" + b"\0" * 40, b"\x80\x04\x95" + b"\0" * 40):
        with pytest.raises(LoraFormatError, match="pickle"):
            inspect(data)


def test_broken_files_are_refused() -> None:
    good = _peft(FLUXISH)
    for bad, why in ((good[:-8], "truncated"), (good + b"\0" * 8, "size"), (b"\xff" * 8 + b"{}", "header"),
                     (struct.pack("<Q", 2) + b"{}", "no tensors"), (b"\x01", "short")):
        with pytest.raises(LoraFormatError) as exc:
            inspect(bad)
        assert exc.value.code == "invalid_lora", why
    with pytest.raises(LoraFormatError, match="no LoRA layers"):
        inspect(save({"some.weight": np.zeros((2, 2), np.float32)}))
    conv = save({"lora_unet_conv_in.lora_down.weight": np.zeros((4, 3, 3, 3), np.float32),
                 "lora_unet_conv_in.lora_up.weight": np.zeros((8, 4, 1, 1), np.float32)})
    with pytest.raises(LoraFormatError, match="convolution") as exc:
        inspect(conv)
    assert exc.value.code == "unsupported_format"
    only_te = save({"lora_te1_text_model_q.lora_down.weight": np.zeros((4, 8), np.float32),
                    "lora_te1_text_model_q.lora_up.weight": np.zeros((8, 4), np.float32)})
    with pytest.raises(LoraFormatError, match="text encoder"):
        inspect(only_te)


def test_layouts_are_told_from_the_keys() -> None:
    header = inspect(_peft(FLUXISH, rank=8))
    assert header.layout == "diffusers" and header.prefixes == {"transformer"} and header.rank == 8
    assert set(header.layers) == set(FLUXISH) and header.layers["transformer_blocks.0.attn.to_q"].in_features == 32
    kohya = save({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": np.zeros((4, 16), np.float32),
                  "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight": np.zeros((16, 4), np.float32),
                  "lora_unet_down_blocks_0_attn1_to_q.alpha": np.array(4.0, np.float32),
                  "lora_te1_text_model_encoder_q.lora_down.weight": np.zeros((4, 8), np.float32),
                  "lora_te1_text_model_encoder_q.lora_up.weight": np.zeros((8, 4), np.float32)})
    header = inspect(kohya)
    assert header.layout == "kohya" and header.encoder_layers == 1 and len(header.layers) == 1
    sgm = save({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight":
                np.zeros((4, 16), np.float32),
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight":
                np.zeros((16, 4), np.float32)})
    assert inspect(sgm).layout == "kohya-sgm"
    bfl = save({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": np.zeros((4, 32), np.float32),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": np.zeros((96, 4), np.float32)})
    assert inspect(bfl).layout == "kohya-bfl"
    mixed = save({"transformer.a.lora_A.weight": np.zeros((4, 8), np.float32),
                  "transformer.a.lora_B.weight": np.zeros((8, 4), np.float32),
                  "lora_unet_b.lora_down.weight": np.zeros((4, 8), np.float32),
                  "lora_unet_b.lora_up.weight": np.zeros((8, 4), np.float32)})
    with pytest.raises(LoraFormatError, match="mixes"):
        inspect(mixed)


def _weights(tmp_path: Path, family: str, layers: dict[str, tuple[int, int]]) -> FamilyLayers:
    folder = tmp_path / family / "transformer"
    folder.mkdir(parents=True)
    save_file({f"{k}.weight": np.zeros(v, np.float32) for k, v in layers.items()} |
              {"norm.bias": np.zeros(3, np.float32)}, folder / "diffusion_pytorch_model.safetensors")
    return denoiser_layers(family, tmp_path / family, ("transformer",), ("kohya-bfl",))


def test_the_family_is_found_by_layer_names_and_shapes(tmp_path: Path) -> None:
    kontext = _weights(tmp_path, "kontext", FLUXISH | {"x_embedder": (32, 64)})
    wider = _weights(tmp_path, "wider", {k: (64, 64) for k in FLUXISH})
    other = _weights(tmp_path, "other", {"blocks.0.attn1.to_q": (32, 32)})
    header = inspect(_peft(FLUXISH))
    assert kontext.misfits(header) == []
    assert "the adapter's is 32->32" in wider.misfits(header)[0]
    assert "not a linear layer of other" in other.misfits(header)[0]
    assert kontext.misfits(inspect(save({
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": np.zeros((4, 32), np.float32),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": np.zeros((96, 4), np.float32)}))) == []
    flat = save({"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight": np.zeros((4, 32), np.float32),
                 "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight": np.zeros((32, 4), np.float32)})
    assert kontext.misfits(inspect(flat)) == []  # kohya's flattened names are matched back to module paths
    assert json.dumps(sorted(kontext.layers)) == json.dumps(sorted([*FLUXISH, "x_embedder"]))
