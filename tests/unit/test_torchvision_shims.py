"""Pins the torchvision workarounds for the Qwen2-VL and Pixtral processors (pipelines/torchvision_shims.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import torchvision_shims


@pytest.mark.skipif(torchvision_shims.torchvision_available(), reason="the shim is a no-op where torchvision exists")
def test_processor_builds_saves_and_loads_without_torchvision(tmp_path: Path) -> None:
    assert torchvision_shims.apply_qwen2vl() is True
    assert torchvision_shims.apply_qwen2vl() is True  # idempotent
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


@pytest.mark.skipif(torchvision_shims.torchvision_available(), reason="the shim is a no-op where torchvision exists")
def test_pixtral_processor_builds_saves_and_loads_without_torchvision(tmp_path: Path) -> None:
    import transformers

    assert torchvision_shims.apply_pixtral() is True
    assert torchvision_shims.apply_pixtral() is True  # idempotent
    from PIL import Image
    from transformers import PixtralImageProcessor, PixtralProcessor

    from weights.tiny.tokenizers import mistral_tokenizer

    assert PixtralProcessor is transformers.models.pixtral.processing_pixtral.PixtralProcessor  # not a placeholder
    tok = mistral_tokenizer()
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size=16),
                                 tokenizer=tok, patch_size=16, spatial_merge_size=2, chat_template=tok.chat_template)
    processor.save_pretrained(tmp_path)
    loaded = PixtralProcessor.from_pretrained(tmp_path)
    out = loaded(text=["[IMG] a cat"], images=[Image.new("RGB", (64, 32))], return_tensors="pt")
    # 64x32 at 16 px patches is 4 x 2 patches, merged 2 x 2 -> one row of 2 [IMG] tokens closed by [IMG_END].
    ids = out["input_ids"][0].tolist()
    img, end = tok.convert_tokens_to_ids("[IMG]"), tok.convert_tokens_to_ids("[IMG_END]")
    assert ids[:3] == [img, img, end]
    assert out["pixel_values"].shape[-2:] == (32, 64)


def test_flux2_dev_family_loads_with_the_shim(demo_dir: Path) -> None:
    import torch

    from pipelines.flux2 import Flux2DevFamily

    fam = Flux2DevFamily(demo_dir / "flux2-dev", "cpu", torch.float32)
    fam.load()
    pipe = fam.pipeline("edit")
    assert (type(pipe).__name__, type(pipe.tokenizer).__name__) == ("Flux2Pipeline", "PixtralProcessor")
