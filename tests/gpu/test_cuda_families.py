"""On a CUDA machine: the families load and render in bfloat16 on the GPU (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.base import RenderParams, RenderSpec, Task
from pipelines.registry import FAMILIES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

WEIGHTS = {"flux-kontext": "flux1-kontext-dev", "sdxl": "sdxl-base-1.0"}


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_on_cuda_bf16(demo_dir: Path, family: str) -> None:
    fam = FAMILIES[family](demo_dir / WEIGHTS[family], "cuda:0", torch.bfloat16)
    fam.load()
    params = RenderParams(task=Task.GENERATE, prompt="p", width=128, height=128, num_images=1, seeds=(1,),
                          num_inference_steps=2, guidance_scale=3.0, strength=1.0)
    a = fam.run(RenderSpec(params), lambda *_: None).images
    b = fam.run(RenderSpec(params), lambda *_: None).images
    assert a[0].size == (128, 128)
    assert a[0].tobytes() == b[0].tobytes()
