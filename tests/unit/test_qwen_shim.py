"""Pins the torchvision workaround for Qwen2-VL processors (pipelines/qwen_shim.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import qwen_shim


@pytest.mark.skipif(qwen_shim.torchvision_available(), reason="the shim is a no-op where torchvision exists")
def test_processor_builds_saves_and_loads_without_torchvision(tmp_path: Path) -> None:
    assert qwen_shim.apply() is True
    assert qwen_shim.apply() is True  # idempotent
    from PIL import Image
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    from weights.tiny.tokenizers import qwen_tokenizer

    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=qwen_tokenizer())
    processor.save_pretrained(tmp_path)
    loaded = Qwen2VLProcessor.from_pretrained(tmp_path)
    assert "video_processor" not in type(loaded).get_attributes()
    out = loaded(text=["Picture 1: <|vision_start|><|image_pad|><|vision_end|> a cat"],
                 images=[Image.new("RGB", (56, 56))], return_tensors="pt")
    assert out["pixel_values"].shape[0] > 0 and out["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_qwen_family_loads_with_the_shim(demo_dir: Path) -> None:
    import torch

    from pipelines.qwen_image_edit import QwenImageEditFamily

    fam = QwenImageEditFamily(demo_dir / "qwen-image-edit-2511", "cpu", torch.float32)
    fam.load()
    assert type(fam.pipeline("edit")).__name__ == "QwenImageEditPlusPipeline"
    assert fam.pipeline("generate").transformer is fam.pipeline("edit").transformer
