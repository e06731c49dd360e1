"""On a CUDA machine: a real out-of-memory inside a render becomes the OutOfMemory outcome, the allocator is back
at its pre-batch level afterwards, and the worker renders again (skipped elsewhere)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipelines.base import RenderParams, Task
from server.engine.work import Completed, OutOfMemory, RenderWork
from server.engine.worker import Worker
from tests.packaged import packaged_config
from weights.locate import LocatedWeights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

MiB = 2**20


@pytest.mark.gpu
def test_a_real_out_of_memory_gives_back_what_the_render_took(demo_dir: Path) -> None:
    manifest = packaged_config().manifest
    located = {"sdxl-base-1.0": LocatedWeights(manifest["sdxl-base-1.0"], demo_dir / "sdxl-base-1.0", demo=True)}
    worker = Worker("w", "cuda:0", torch.bfloat16, located, packaged_config().memory)
    worker.family("sdxl-base-1.0")  # the weights are the baseline, loaded before the batch
    params = RenderParams(Task.GENERATE, "p", 1024, 1024, 16, tuple(range(16)), 2, 5.0, 1.0)
    work = RenderWork("sdxl-base-1.0", "sdxl", params)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    # 16 MiB beyond what the allocator holds now: 16 images at 1 MP cannot fit, whatever the tiny model's widths.
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 16 * MiB) / total))
    try:
        assert isinstance(worker.render(work, lambda *_: None), OutOfMemory)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.synchronize()
    # Back to the pre-batch level (a MiB of slack for cuBLAS workspaces created on first use).
    assert torch.cuda.memory_allocated() <= before + MiB
    small = replace(work, params=replace(params, width=128, height=128, num_images=1, seeds=(1,)))
    done = worker.render(small, lambda *_: None)
    assert isinstance(done, Completed) and done.images[0].size == (128, 128)
