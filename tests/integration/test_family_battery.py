"""One battery over every registered family (like diffusers' pipeline test mixin): a new family is tested by
registering it. Each loads its tiny real pipeline, renders every task it declares through `render`, gives the
same pixels for the same seed and different ones for another, and has a batch key and a memory estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.base import Family, RenderParams, RenderSpec, Task
from pipelines.batching import BatchKey
from pipelines.registry import FAMILIES
from pipelines.video_base import VideoFamily
from tests.packaged import packaged_config

WEIGHTS = {entry.family: name for name, entry in packaged_config().manifest.items()}


def _params(fam: type[Family], task: Task, seed: int) -> RenderParams:
    side = max(64, 2 * fam.size_multiple)
    video = issubclass(fam, VideoFamily)
    return RenderParams(task=task, prompt="a red square", width=side, height=side, num_images=1, seeds=(seed,),
                        num_inference_steps=2, guidance_scale=1.0 if video else 2.5, strength=1.0,
                        num_sources=0 if task is Task.GENERATE else 1,
                        num_frames=fam.frame_step + 1 if video else 0, fps=24.0 if video else 0.0)


def _spec(params: RenderParams) -> RenderSpec:
    source = Image.new("RGB", (params.width, params.height), (200, 30, 30))
    mask = Image.new("L", (params.width, params.height), 255) if params.task is Task.INPAINT else None
    return RenderSpec(params, sources=(source,) * params.num_sources, mask=mask)


def _pixels(result: object) -> np.ndarray:
    if result.videos:  # type: ignore[attr-defined]
        return result.videos[0].frames  # type: ignore[attr-defined]
    return np.asarray(result.images[0])  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_battery(demo_dir: Path, name: str) -> None:
    cls = FAMILIES[name]
    fam = cls(demo_dir / WEIGHTS[name], "cpu", torch.float32)
    fam.load()
    assert fam.pipelines, "load fills the pipelines by role"
    assert all(c.bytes >= 0 for c in fam.components()) and sum(c.bytes for c in fam.components()) > 0
    for task in sorted(cls.tasks):
        params = _params(cls, task, seed=11)
        cls.check(params)
        key = cls.batch_key(params)
        assert isinstance(key, BatchKey) and BatchKey.decode(key.encode()) == key and key.family == name
        coeffs = packaged_config().coefficients(cls.name)
        assert cls.activation_bytes(params, 1, coeffs) >= 0
        assert cls.activation_bytes(params, 2, coeffs) >= cls.activation_bytes(params, 1, coeffs)
        steps: list[tuple[int, int]] = []
        first = fam.render(_spec(params), lambda k, n: steps.append((k, n)))
        out = _pixels(first)
        assert out.shape[-3:-1] == (params.height, params.width), (task, out.shape)
        assert steps and steps[-1][0] == steps[-1][1], (task, steps)
        again = _pixels(fam.render(_spec(params), lambda *_: None))
        assert np.array_equal(out, again), f"{name} {task}: the same seed must give the same pixels"
        other = _pixels(fam.render(_spec(_params(cls, task, seed=12)), lambda *_: None))
        assert not np.array_equal(out, other), f"{name} {task}: another seed must give other pixels"
