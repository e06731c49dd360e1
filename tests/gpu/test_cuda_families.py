"""On a CUDA machine: every family loads and renders deterministically in bfloat16 on the GPU (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.base import RenderParams, RenderSpec, Task
from pipelines.registry import FAMILIES
from pipelines.video_base import VideoFamily
from tests.packaged import packaged_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

WEIGHTS = {entry.family: name for name, entry in packaged_config().manifest.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_on_cuda_bf16(demo_dir: Path, family: str) -> None:
    cls = FAMILIES[family]
    fam = cls(demo_dir / WEIGHTS[family], "cuda:0", torch.bfloat16)
    fam.load()
    video = issubclass(cls, VideoFamily)
    size = 256 if video else 128
    params = RenderParams(
        task=Task.IMAGE_TO_VIDEO if video else Task.GENERATE, prompt="p", width=size, height=size, num_images=1,
        seeds=(1,), num_inference_steps=2, guidance_scale=1.0, strength=1.0, num_sources=1 if video else 0,
        num_frames=cls.valid_frames(17) if video else 0, fps=16.0 if video else 0.0,
    )
    spec = RenderSpec(params, sources=(Image.new("RGB", (size, size), (40, 90, 200)),) if video else ())
    a, b = fam.run(spec, lambda *_: None), fam.run(spec, lambda *_: None)
    if video:
        assert a.videos[0].frames.shape == (params.num_frames, size, size, 3)
        assert (a.videos[0].frames == b.videos[0].frames).all()
    else:
        assert a.images[0].size == (size, size)
        assert a.images[0].tobytes() == b.images[0].tobytes()
