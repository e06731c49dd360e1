"""The fast path on the tiny real pipelines (CPU): step caching cuts full denoiser passes within the preset's
quality bound and leaves quality presets exact; backends and fp8 that cannot run fall back (or refuse) with the
reason recorded; edits from different requests share one call and each equals its solo render."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.acceleration import AccelerationRefused, LoadProfile
from pipelines.base import RenderParams, RenderSpec, Task
from pipelines.flux_kontext import FluxKontextFamily
from pipelines.sdxl import SDXLFamily
from pipelines.step_cache import StepCache
from tests.packaged import packaged_config

CATALOG = packaged_config().catalog
# Demo weights everywhere: the presets use their demo thresholds (configs/acceleration.toml says why).
ACCEL = packaged_config().with_demo(frozenset(CATALOG.weights_needed())).acceleration
KONTEXT_FAST = ACCEL.step_cache("flux-kontext-pro")
# The fast preset may move pixels, but a cached step reuses the last full pass's residual: on the demo weights it
# must stay this close to the uncached render (the benchmark measures PSNR/SSIM on real sizes).
MIN_PSNR_DB = 30.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _edit(preset: str = "", seed: int = 3, steps: int = 28, negative: str | None = None) -> RenderSpec:
    params = RenderParams(Task.EDIT, "add a hat", 256, 256, 1, (seed,), steps, 2.5, 1.0, num_sources=1,
                          preset=preset, negative_prompt=negative, source_size=(256, 256))
    return RenderSpec(params, sources=(Image.new("RGB", (256, 256), (200, 40, 40)),))


@pytest.fixture(scope="module")
def kontext(demo_dir: Path) -> FluxKontextFamily:
    fam = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32,
                            ACCEL.load_profile("flux1-kontext-dev"))
    fam.load()
    return fam


def test_the_fast_preset_skips_passes_within_its_quality_bound(kontext: FluxKontextFamily, demo_dir: Path) -> None:
    assert KONTEXT_FAST.kind == "taylorseer" and kontext.profile.step_cache_hooks
    fast = kontext.render(_edit(KONTEXT_FAST.encode()), lambda *_: None)
    exact = kontext.render(_edit(), lambda *_: None)
    assert exact.stats["denoiser_passes"] == 28 and exact.stats["step_cache"] is None
    # The target for Kontext's fast preset is <= 16 of 28; the fixed schedule spends exactly what it says.
    assert fast.stats["denoiser_passes"] == KONTEXT_FAST.passes(28) <= 16, fast.stats
    assert psnr(np.asarray(fast.images[0]), np.asarray(exact.images[0])) >= MIN_PSNR_DB
    # The quality preset with the hooks installed is exactly the model without them (the rest of the profile kept).
    bare = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32,
                             replace(ACCEL.load_profile("flux1-kontext-dev"), step_cache_hooks=False))
    bare.load()
    assert np.array_equal(np.asarray(bare.render(_edit(), lambda *_: None).images[0]), np.asarray(exact.images[0]))
    # True CFG (a negative prompt) runs two passes per step: the cache stands down and says why.
    cfg = kontext.render(_edit(KONTEXT_FAST.encode(), steps=4, negative="blurry"), lambda *_: None)
    assert cfg.stats["denoiser_passes"] == 8 and "true CFG" in cfg.stats["step_cache_off"]


def test_first_block_cache_skips_by_threshold(kontext: FluxKontextFamily) -> None:
    """The other kind (sora-2 and nano-banana use it) on the same loaded weights: hooks come and go per call, so
    any preset runs on any cached weights, and the exact call after it is untouched by either."""
    exact = kontext.render(_edit(), lambda *_: None)
    fbc = kontext.render(_edit(StepCache("fbcache", threshold=0.35).encode()), lambda *_: None)
    assert fbc.stats["denoiser_passes"] < 28 and fbc.stats["step_cache"] == "fbcache:0.35"
    assert psnr(np.asarray(fbc.images[0]), np.asarray(exact.images[0])) >= MIN_PSNR_DB
    assert not any(getattr(m, "is_cache_enabled", False) for m in kontext.denoiser_modules())
    again = kontext.render(_edit(), lambda *_: None)
    assert again.stats["denoiser_passes"] == 28
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(exact.images[0]))


def test_each_denoising_loop_of_a_render_starts_the_cache_afresh(kontext: FluxKontextFamily) -> None:
    """A render may run several loops (the tiles of a refine pass): the second must not predict from the first's
    state. Two loops under one cached render give the same image and the same passes each."""
    from pipelines.step_cache import step_cache_call

    spec = _edit(KONTEXT_FAST.encode(), steps=10)
    alone = kontext.render(spec, lambda *_: None)
    schedulers = [kontext.pipeline("edit").scheduler]
    with step_cache_call(kontext.denoiser_modules(), KONTEXT_FAST, not kontext.sets_cache_context,
                         schedulers) as counter:
        first = kontext.run(spec, lambda *_: None)
        second = kontext.run(spec, lambda *_: None)
    assert counter.passes == 2 * alone.stats["denoiser_passes"] == 2 * KONTEXT_FAST.passes(10)
    for image in (first, second):
        assert np.array_equal(np.asarray(image.images[0]), np.asarray(alone.images[0]))


def test_quality_presets_are_uncached_and_fast_tiers_are() -> None:
    for quality in ("flux-kontext-max", "vertex/nano-banana-pro", "veo-3", "sora-2-pro"):
        assert ACCEL.step_cache(quality) == StepCache(), quality
    assert ACCEL.step_cache("flux-kontext-pro").kind == "taylorseer"
    for fast in ("sora-2", "nano-banana"):
        assert ACCEL.step_cache(fast).kind == "fbcache", fast
    assert ACCEL.step_cache("seedream-4.0") == StepCache()  # SDXL's UNet takes no cache hooks
    assert ACCEL.step_cache("veo-3-fast") == StepCache()  # no hooks describe LTX-2's audio-video block


def test_backends_and_fp8_that_cannot_run_fall_back_with_the_reason(demo_dir: Path) -> None:
    profile = LoadProfile(attention=("_flash_3", "sage", "native"), variants=("fp8_dynamic", "bf16"), compile="auto")
    fam = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32, profile)
    fam.load()
    record = fam.applied.record()  # type: ignore[union-attr]
    assert record["attention"]["active"] == "native"
    assert [r.split(":")[0] for r in record["attention"]["reasons"]] == ["_flash_3", "sage"]
    assert all("CUDA GPU" in r for r in record["attention"]["reasons"])
    assert record["quantization"]["variant"] == "bf16" and record["quantization"]["requested"] == "auto"
    assert "fp8_dynamic needs an NVIDIA GPU" in record["quantization"]["passed_over"][0]
    assert record["compile"]["active"] is False and "CUDA only" in record["compile"]["reason"]
    forced = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32,
                               LoadProfile(variants=("fp8_dynamic",), variant_pinned=True))
    with pytest.raises(AccelerationRefused, match="fp8"):
        forced.load()


def test_a_refused_profile_fails_the_job_with_the_reason(demo_dir: Path) -> None:
    from server.engine.work import Failed, RenderWork
    from server.engine.worker import Worker
    from weights.locate import LocatedWeights

    entry = packaged_config().manifest["flux1-kontext-dev"]
    pinned = LoadProfile(variants=("fp8_dynamic",), variant_pinned=True)
    worker = Worker("w0", "cpu", torch.float32, {entry.name: LocatedWeights(entry, demo_dir / entry.name, True)},
                    packaged_config().memory, profiles={entry.name: pinned})
    params = RenderParams(Task.GENERATE, "x", 64, 64, 1, (1,), 1, 2.5, 1.0)
    outcome = worker.render(RenderWork(entry.name, "flux-kontext", params), lambda *_: None)
    assert isinstance(outcome, Failed) and outcome.error is not None
    assert outcome.error["code"] == "unsupported_feature" and "fp8" in outcome.error["message"]


@pytest.mark.parametrize(("family", "preset"), [(FluxKontextFamily, ""), (FluxKontextFamily, KONTEXT_FAST.encode()),
                                               (SDXLFamily, "")], ids=["flux-kontext", "flux-kontext-fast", "sdxl"])
@pytest.mark.parametrize("task", [Task.EDIT, Task.INPAINT])
def test_merged_edits_equal_their_solo_renders(demo_dir: Path, family: type, preset: str, task: Task) -> None:
    """At most 4 levels on under 0.5% of pixels, because batched matmuls may sum in another order on the CPU (SDXL
    alone runs batch 2 for CFG, merged it runs 6; whether Kontext's batch of 3 sums like its batch of 1 depends on
    the CPU's kernels: byte-identical on one build machine, 1 level on 0.008% of pixels on an AMD EPYC), and the
    fast preset's extrapolation (each image from its own outputs only) scales a last-bit difference by the steps it
    predicts ahead (measured: 1 level on 0.02% of pixels)."""
    weights = "flux1-kontext-dev" if family is FluxKontextFamily else "sdxl-base-1.0"
    fam = family(demo_dir / weights, "cpu", torch.float32, ACCEL.load_profile(weights))
    fam.load()
    colours = ((200, 40, 40), (20, 200, 40), (20, 40, 200))
    sources = [Image.new("RGB", (96, 64), c) for c in colours]
    masks = [Image.new("L", (64, 64), v) for v in (255, 128, 255)]

    def params(**kw: object) -> RenderParams:
        base = dict(task=task, prompt="p0", width=64, height=64, num_images=1, seeds=(1,),
                    num_inference_steps=8 if preset else 4, guidance_scale=2.5, strength=0.75, num_sources=1,
                    source_size=(96, 64), preset=preset)
        return RenderParams(**{**base, **kw})  # type: ignore[arg-type]

    inpaint = task is Task.INPAINT
    solo = [np.asarray(fam.render(RenderSpec(params(prompt=f"p{i}", seeds=(i + 1,)), sources=(src,),
                                             mask=masks[i] if inpaint else None), lambda *_: None).images[0])
            for i, src in enumerate(sources)]
    vae = next(iter(fam.pipelines.values())).vae
    vae_batches: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: vae_batches.append(args[0].shape[0]))
             for m in (vae.encoder, vae.decoder)]
    try:
        merged = fam.render(RenderSpec(params(num_images=3, seeds=(1, 2, 3), prompts=("p0", "p1", "p2")),
                                       sources=tuple(sources), masks=tuple(masks) if inpaint else ()),
                            lambda *_: None)
    finally:
        for hook in hooks:
            hook.remove()
    # The memory rule counts one image's VAE peak whatever the batch: a shared call encodes and decodes one by one.
    assert vae_batches and set(vae_batches) == {1}, vae_batches
    if preset:  # inpaint at strength 0.75 runs 6 of the 8 steps
        assert merged.stats["denoiser_passes"] == KONTEXT_FAST.passes(6 if inpaint else 8) < (6 if inpaint else 8)
    merged = merged.images
    assert len(merged) == 3
    for alone, shared in zip(solo, merged, strict=True):
        diff = np.abs(alone.astype(int) - np.asarray(shared).astype(int))
        assert diff.max() <= 4 and (diff > 0).mean() < 5e-3, (diff.max(), (diff > 0).mean())


def test_channels_last_converts_2d_convolutions_and_leaves_video_vaes(kontext: FluxKontextFamily) -> None:
    """Kontext's profile asks for channels-last: its VAE's kernels are NHWC and the runtime says so. A 3-D (video)
    VAE under the same profile is left as it is rather than failing to load."""
    from types import SimpleNamespace

    from pipelines.acceleration import apply_load_profile

    assert kontext.profile.channels_last and kontext.applied is not None and kontext.applied.channels_last
    conv = next(m for m in kontext.pipeline("edit").vae.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    video = SimpleNamespace(transformer=torch.nn.Linear(4, 4), vae=torch.nn.Conv3d(3, 3, 3))
    applied = apply_load_profile(LoadProfile(compile="off", channels_last=True), {"video": video}, ("transformer",),
                                 "cpu", torch.float32, dispatches=False)
    assert not applied.channels_last and video.vae.weight.is_contiguous()
