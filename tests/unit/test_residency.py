"""The worker carrying out the policy's residency plans on a fake device budget (tiny models, CPU)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from server.engine.policy import NeverFits, Placement
from server.engine.worker import Worker
from tests.packaged import packaged_config
from weights.locate import LocatedWeights

GB = 10**9
MEMORY = packaged_config().memory


def test_worker_evicts_lru_family_under_a_budget(demo_dir: Path) -> None:
    manifest = packaged_config().manifest
    located = {n: LocatedWeights(manifest[n], demo_dir / n, demo=True) for n in ("flux1-kontext-dev", "sdxl-base-1.0")}
    probe = Worker("w", "cpu", torch.float32, located, MEMORY)
    kontext, sdxl = probe.weight_bytes("flux1-kontext-dev"), probe.weight_bytes("sdxl-base-1.0")
    assert kontext > 0 and sdxl > 0
    # Room for either model, never both: using one evicts the other.
    worker = Worker("w", "cpu", torch.float32, located, MEMORY, budget=max(kontext, sdxl) + min(kontext, sdxl) // 2)
    worker.preload(["flux1-kontext-dev", "sdxl-base-1.0"])
    assert worker.loaded() == {"flux1-kontext-dev"}  # the second did not fit beside the first
    worker.family("sdxl-base-1.0")
    assert worker.loaded() == {"sdxl-base-1.0"}
    fam, load_s = worker.family("sdxl-base-1.0")
    assert load_s == 0.0 and fam.pipeline("img2img") is not None
    assert worker.placement("sdxl-base-1.0") is Placement.RESIDENT


def test_evicted_models_park_in_host_ram_and_come_back_without_reloading(demo_dir: Path) -> None:
    manifest = packaged_config().manifest
    names = ("flux1-kontext-dev", "sdxl-base-1.0")
    located = {n: LocatedWeights(manifest[n], demo_dir / n, demo=True) for n in names}
    probe = Worker("w", "cpu", torch.float32, located, MEMORY)
    kontext, sdxl = (probe.weight_bytes(n) for n in names)
    worker = Worker("w", "cpu", torch.float32, located, MEMORY, budget=max(kontext, sdxl) + min(kontext, sdxl) // 2,
                    ram_budget=kontext + sdxl)
    first, _ = worker.family("flux1-kontext-dev")
    worker.family("sdxl-base-1.0")
    assert worker.loaded() == {"sdxl-base-1.0"} and worker.in_ram() == {"flux1-kontext-dev"}
    again, _ = worker.family("flux1-kontext-dev")
    assert again is first  # the same objects, moved back: no second from_pretrained
    assert worker.in_ram() == {"sdxl-base-1.0"}
    assert worker.moves == 5  # load, park, load, park, bring back


def test_a_job_that_can_never_fit_is_refused_with_sizes(demo_dir: Path) -> None:
    manifest = packaged_config().manifest
    located = {"sdxl-base-1.0": LocatedWeights(manifest["sdxl-base-1.0"], demo_dir / "sdxl-base-1.0", demo=True)}
    worker = Worker("w", "cpu", torch.float32, located, MEMORY, budget=1000)
    with pytest.raises(NeverFits):
        worker.family("sdxl-base-1.0", activation_bytes=10**6)


@pytest.mark.parametrize("budget", [None, 10**15])
def test_worker_keeps_everything_when_it_fits(demo_dir: Path, budget: int | None) -> None:
    manifest = packaged_config().manifest
    located = {n: LocatedWeights(manifest[n], demo_dir / n, demo=True) for n in ("flux1-kontext-dev", "sdxl-base-1.0")}
    worker = Worker("w", "cpu", torch.float32, located, MEMORY, budget=budget)
    worker.preload(list(located))
    assert worker.loaded() == set(located)


def test_outputs_are_chunked_when_a_batch_would_not_fit(demo_dir: Path) -> None:
    from pipelines.base import RenderParams, Task
    from pipelines.flux2 import Flux2KleinFamily

    manifest = packaged_config().manifest
    located = {"flux2-klein-4b": LocatedWeights(manifest["flux2-klein-4b"], demo_dir / "flux2-klein-4b", demo=True)}
    params = RenderParams(task=Task.GENERATE, prompt="p", width=256, height=256, num_images=4, seeds=(1, 2, 3, 4),
                          num_inference_steps=1, guidance_scale=1.0, strength=1.0)
    coeffs = packaged_config().coefficients(Flux2KleinFamily.name)
    one = Flux2KleinFamily.activation_bytes(replace(params, num_images=1), 1, coeffs)
    two = Flux2KleinFamily.activation_bytes(replace(params, num_images=2), 1, coeffs)
    probe = Worker("w", "cpu", torch.float32, located, MEMORY)
    weights = probe.weight_bytes("flux2-klein-4b")
    assert Worker("w", "cpu", torch.float32, located, MEMORY).images_per_call("flux2-klein-4b", params) == 4  # unlimited
    tight = Worker("w", "cpu", torch.float32, located, MEMORY, budget=weights + (one + two) // 2)
    tight.preload(["flux2-klein-4b"])
    assert tight.images_per_call("flux2-klein-4b", params) == 1
    roomy = Worker("w", "cpu", torch.float32, located, MEMORY, budget=weights + two)
    roomy.preload(["flux2-klein-4b"])
    assert roomy.images_per_call("flux2-klein-4b", params) == 2
