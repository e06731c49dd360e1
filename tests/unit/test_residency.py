"""The eviction rule and the worker applying it, on a fake device budget (no tensors)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from server.engine.residency import Resident, fits, plan_evictions
from server.engine.worker import Worker
from weights.locate import LocatedWeights
from weights.manifest import load_manifest

GB = 10**9


def test_no_budget_never_evicts() -> None:
    assert plan_evictions([Resident("a", 50 * GB)], "b", 50 * GB, 10 * GB, None) == []


def test_evicts_least_recent_until_the_job_fits() -> None:
    lru = [Resident("old", 30 * GB), Resident("mid", 20 * GB), Resident("new", 20 * GB)]
    # 70 GB loaded + 25 GB weights + 5 GB activations on an 80 GB budget: drop "old" (30) -> 40 + 30 = 70 fits.
    assert plan_evictions(lru, "video", 25 * GB, 5 * GB, 80 * GB) == ["old"]
    assert plan_evictions(lru, "video", 45 * GB, 5 * GB, 80 * GB) == ["old", "mid"]


def test_a_loaded_target_only_needs_room_for_activations() -> None:
    lru = [Resident("img", 30 * GB), Resident("vid", 40 * GB)]
    assert plan_evictions(lru, "vid", 0, 5 * GB, 80 * GB) == []
    assert plan_evictions(lru, "vid", 0, 15 * GB, 80 * GB) == ["img"]


def test_too_big_for_an_empty_device_evicts_all_and_tries() -> None:
    assert plan_evictions([Resident("a", 1 * GB)], "huge", 100 * GB, 0, 80 * GB) == ["a"]
    assert fits([Resident("a", 60 * GB)], 20 * GB, 80 * GB) and not fits([Resident("a", 61 * GB)], 20 * GB, 80 * GB)


def test_worker_evicts_lru_family_under_a_budget(demo_dir: Path) -> None:
    manifest = load_manifest()
    located = {n: LocatedWeights(manifest[n], demo_dir / n, demo=True) for n in ("flux1-kontext-dev", "sdxl-base-1.0")}
    probe = Worker("w", "cpu", torch.float32, located)
    kontext, sdxl = probe.weight_bytes("flux1-kontext-dev"), probe.weight_bytes("sdxl-base-1.0")
    assert kontext > 0 and sdxl > 0
    # Room for either model, never both: using one evicts the other.
    worker = Worker("w", "cpu", torch.float32, located, budget=max(kontext, sdxl) + min(kontext, sdxl) // 2)
    worker.preload(["flux1-kontext-dev", "sdxl-base-1.0"])
    assert worker.loaded() == {"flux1-kontext-dev"}  # the second did not fit beside the first
    worker.family("sdxl-base-1.0")
    assert worker.loaded() == {"sdxl-base-1.0"}
    fam, load_s = worker.family("sdxl-base-1.0")
    assert load_s == 0.0 and fam.pipeline("img2img") is not None


@pytest.mark.parametrize("budget", [None, 10**15])
def test_worker_keeps_everything_when_it_fits(demo_dir: Path, budget: int | None) -> None:
    manifest = load_manifest()
    located = {n: LocatedWeights(manifest[n], demo_dir / n, demo=True) for n in ("flux1-kontext-dev", "sdxl-base-1.0")}
    worker = Worker("w", "cpu", torch.float32, located, budget=budget)
    worker.preload(list(located))
    assert worker.loaded() == set(located)


def test_outputs_are_chunked_when_a_batch_would_not_fit(demo_dir: Path) -> None:
    from pipelines.base import RenderParams, Task
    from pipelines.flux2 import Flux2KleinFamily

    manifest = load_manifest()
    located = {"flux2-klein-4b": LocatedWeights(manifest["flux2-klein-4b"], demo_dir / "flux2-klein-4b", demo=True)}
    params = RenderParams(task=Task.GENERATE, prompt="p", width=256, height=256, num_images=4, seeds=(1, 2, 3, 4),
                          num_inference_steps=1, guidance_scale=1.0, strength=1.0)
    one = Flux2KleinFamily.activation_bytes(replace(params, num_images=1), 1)
    two = Flux2KleinFamily.activation_bytes(replace(params, num_images=2), 1)
    probe = Worker("w", "cpu", torch.float32, located)
    weights = probe.weight_bytes("flux2-klein-4b")
    assert Worker("w", "cpu", torch.float32, located).images_per_call("flux2-klein-4b", params) == 4  # no budget
    tight = Worker("w", "cpu", torch.float32, located, budget=weights + (one + two) // 2)
    tight.preload(["flux2-klein-4b"])
    assert tight.images_per_call("flux2-klein-4b", params) == 1
    roomy = Worker("w", "cpu", torch.float32, located, budget=weights + two)
    roomy.preload(["flux2-klein-4b"])
    assert roomy.images_per_call("flux2-klein-4b", params) == 2
