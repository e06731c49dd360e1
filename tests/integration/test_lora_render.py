"""Per-request LoRAs through the real families on their demo weights: scale 0 is the base render, scale 1 is what
diffusers' own `fuse_lora` renders, a batch of requests with different adapters equals each rendered alone, the
kohya layout renders like the diffusers one, and a worker switches adapters without reloading its model."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.base import AdapterUse, Family, RenderParams, RenderSpec, Task
from pipelines.lora_runtime import LoadedAdapter, load_adapter
from pipelines.registry import family_class
from weights.demo_loras import make_adapter

# (family, weights, task): every family that takes LoRAs, at its cheapest render.
FAMILIES = [("flux-kontext", "flux1-kontext-dev", Task.GENERATE), ("sdxl", "sdxl-base-1.0", Task.GENERATE),
            ("flux2-klein", "flux2-klein-4b", Task.GENERATE), ("qwen-image-edit", "qwen-image-edit-2511", Task.GENERATE),
            ("wan2.2-ti2v-5b", "wan2.2-ti2v-5b", Task.IMAGE_TO_VIDEO), ("ltx2", "ltx-2", Task.IMAGE_TO_VIDEO)]
SOURCE = Image.new("RGB", (64, 64), (40, 120, 200))


def _params(fam: Family, task: Task) -> RenderParams:
    if task is Task.IMAGE_TO_VIDEO:
        step = fam.frame_step  # type: ignore[attr-defined]
        return RenderParams(task, "a slow pan", 64, 64, 1, (7,), 2, 3.0, 1.0, num_sources=1, num_frames=step + 1,
                            fps=24.0)
    return RenderParams(task, "a red fox", 64, 64, 1, (3,), 2, 3.5, 1.0,
                        num_sources=1 if task is Task.EDIT else 0)


def _pixels(fam: Family, params: RenderParams, adapters: dict[str, LoadedAdapter] | None = None) -> np.ndarray:
    sources = (SOURCE,) * params.num_sources
    if params.prompts and params.num_sources:
        sources = (SOURCE,) * (params.num_sources * params.num_images)
    out = fam.render(RenderSpec(params, sources=sources), lambda _k, _n: None, adapters)
    if out.videos:
        return np.stack([v.frames for v in out.videos]).astype(np.int16)
    return np.stack([np.asarray(im) for im in out.images]).astype(np.int16)


def _adapter(fam: Family, path: Path) -> tuple[str, LoadedAdapter]:
    import diffusers

    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return sha, load_adapter(sha, data, getattr(diffusers, fam.pipeline_class), fam.denoisers)


@pytest.mark.parametrize(("family", "weights", "task"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_scale_zero_is_the_base_and_scale_one_is_diffusers_fuse_lora(demo_dir: Path, tmp_path: Path, family: str,
                                                                     weights: str, task: Task) -> None:
    cls = family_class(family)
    assert cls.takes_loras
    fam = cls(demo_dir / weights, "cpu", torch.float32)
    fam.load()
    path = make_adapter(cls, demo_dir / weights, tmp_path / "a", seed=1)
    sha, adapter = _adapter(fam, path)
    params = _params(fam, task)
    base = _pixels(fam, params)
    off = _pixels(fam, replace(params, loras=(AdapterUse(sha, 0.0),)), {sha: adapter})
    on = _pixels(fam, replace(params, loras=(AdapterUse(sha, 1.0),)), {sha: adapter})
    assert np.array_equal(off, base)
    assert np.abs(on - base).mean() > 0.5  # the adapter changes the render
    # diffusers' own path: load the same file, fuse it into the weights, render without adapters.
    main = next(iter(fam.pipelines.values()))
    main.load_lora_weights(str(path), adapter_name="reference")
    main.fuse_lora(lora_scale=1.0, components=list(cls.denoisers[:1]))
    main.unload_lora_weights()
    fused = _pixels(fam, params)
    assert np.abs(fused - on).max() <= 2, f"{family}: unfused grouped LoRA differs from fuse_lora"


def test_mixed_adapters_in_one_call_equal_each_alone(demo_dir: Path, tmp_path: Path) -> None:
    """Three requests (A, B, none) merged into one pipeline call: each image equals its request's solo render.
    SDXL runs true CFG (the batch doubles into [uncond, cond] rows), Kontext does not."""
    for family, weights in (("flux-kontext", "flux1-kontext-dev"), ("sdxl", "sdxl-base-1.0")):
        cls = family_class(family)
        fam = cls(demo_dir / weights, "cpu", torch.float32)
        fam.load()
        a_sha, a = _adapter(fam, make_adapter(cls, demo_dir / weights, tmp_path / f"{family}-a", seed=1))
        b_sha, b = _adapter(fam, make_adapter(cls, demo_dir / weights, tmp_path / f"{family}-b", seed=2, rank=8))
        adapters = {a_sha: a, b_sha: b}
        solo = _params(fam, Task.GENERATE)
        sets = ((AdapterUse(a_sha, 1.0),), (AdapterUse(b_sha, 0.7),), ())
        alone = [_pixels(fam, replace(solo, seeds=(s,), loras=uses), adapters)[0]
                 for s, uses in zip((3, 4, 5), sets, strict=True)]
        merged = replace(solo, num_images=3, seeds=(3, 4, 5), prompts=(solo.prompt,) * 3, image_loras=sets)
        together = _pixels(fam, merged, adapters)
        for i in range(3):
            assert np.abs(together[i] - alone[i]).max() <= 2, (family, i)
        assert np.abs(alone[0] - alone[1]).mean() > 0.5


def test_kohya_layout_renders_like_the_diffusers_layout(demo_dir: Path, tmp_path: Path) -> None:
    cls = family_class("sdxl")
    fam = cls(demo_dir / "sdxl-base-1.0", "cpu", torch.float32)
    fam.load()
    d_sha, d = _adapter(fam, make_adapter(cls, demo_dir / "sdxl-base-1.0", tmp_path / "d", seed=5))
    k_sha, k = _adapter(fam, make_adapter(cls, demo_dir / "sdxl-base-1.0", tmp_path / "k", seed=5, layout="kohya"))
    assert d_sha != k_sha and set(d.layers) == set(k.layers)
    params = _params(fam, Task.GENERATE)
    via_d = _pixels(fam, replace(params, loras=(AdapterUse(d_sha, 1.0),)), {d_sha: d})
    via_k = _pixels(fam, replace(params, loras=(AdapterUse(k_sha, 1.0),)), {k_sha: k})
    assert np.abs(via_d - via_k).max() <= 1


def test_a_worker_switches_adapters_without_reloading(demo_dir: Path, tmp_path: Path) -> None:
    """A -> B -> none -> A on one worker: the model loads once, each file is converted once and then sent no more,
    and every render equals the same request rendered by a fresh family."""
    from server.engine.work import Completed, RenderWork
    from server.engine.worker import Worker
    from tests.packaged import packaged_config
    from weights.locate import LocatedWeights

    config = packaged_config()
    located = {"flux1-kontext-dev": LocatedWeights(config.manifest["flux1-kontext-dev"],
                                                   demo_dir / "flux1-kontext-dev", True)}
    worker = Worker("w0", "cpu", torch.float32, located, config.memory)
    cls = family_class("flux-kontext")
    files = {name: make_adapter(cls, demo_dir / "flux1-kontext-dev", tmp_path / name, seed=seed).read_bytes()
             for name, seed in (("a", 11), ("b", 12))}
    shas = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    base = RenderParams(Task.GENERATE, "a red fox", 64, 64, 1, (3,), 2, 3.5, 1.0)
    outputs = []
    for name in ("a", "b", None, "a"):
        uses = (AdapterUse(shas[name], 1.0),) if name else ()
        held = worker.adapters_held()
        sent = {shas[name]: files[name]} if name and shas[name] not in held else {}
        outcome = worker.render(RenderWork("flux1-kontext-dev", "flux-kontext", replace(base, loras=uses),
                                           adapters=sent), lambda _k, _n: None)
        assert isinstance(outcome, Completed), outcome
        outputs.append((name, np.asarray(outcome.images[0]).astype(np.int16), outcome.load_s))
    assert worker.adapter_cache.loads == 2 and worker.adapters_held() == {shas["a"], shas["b"]}
    assert all(load_s == 0.0 for _, _, load_s in outputs[1:])  # the model was loaded by the first render only
    assert np.array_equal(outputs[0][1], outputs[3][1])
    fresh = cls(demo_dir / "flux1-kontext-dev", "cpu", torch.float32)
    fresh.load()
    assert np.array_equal(outputs[2][1], _pixels(fresh, base)[0])
    assert np.abs(outputs[0][1] - outputs[1][1]).mean() > 0.5


def test_kohya_flux_layout_renders_like_its_diffusers_equivalent(demo_dir: Path) -> None:
    """A kohya FLUX LoRA (BFL's module names: one fused qkv per block) goes through diffusers' converter and renders
    exactly like the same update written as diffusers' to_q/to_k/to_v adapters."""
    import diffusers
    from safetensors.torch import save

    from pipelines.lora_format import denoiser_layers, inspect

    cls = family_class("flux-kontext")
    fam = cls(demo_dir / "flux1-kontext-dev", "cpu", torch.float32)
    fam.load()
    dim = fam.pipelines["edit"].transformer.config.num_attention_heads * \
        fam.pipelines["edit"].transformer.config.attention_head_dim
    gen = torch.Generator().manual_seed(7)
    down, up = torch.randn(4, dim, generator=gen) * 3, torch.randn(3 * dim, 4, generator=gen) * 3
    kohya = save({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
                  "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
                  "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0)})
    plain = save({f"transformer.transformer_blocks.0.attn.{name}.{half}.weight": tensor.contiguous()
                  for i, name in enumerate(("to_q", "to_k", "to_v"))
                  for half, tensor in (("lora_A", down.clone()), ("lora_B", up[i * dim:(i + 1) * dim]))})
    header = inspect(kohya)
    assert header.layout == "kohya-bfl"
    layers = denoiser_layers("flux-kontext", demo_dir / "flux1-kontext-dev", cls.denoisers, cls.lora_layouts)
    assert layers.misfits(header) == []
    adapters = {}
    for data in (kohya, plain):
        sha = hashlib.sha256(data).hexdigest()
        adapters[sha] = load_adapter(sha, data, diffusers.FluxKontextPipeline, cls.denoisers)
    (k_sha, k), (p_sha, p) = adapters.items()
    assert set(k.layers) == set(p.layers) == {f"transformer_blocks.0.attn.{n}" for n in ("to_q", "to_k", "to_v")}
    params = _params(fam, Task.GENERATE)
    via_kohya = _pixels(fam, replace(params, loras=(AdapterUse(k_sha),)), adapters)
    via_plain = _pixels(fam, replace(params, loras=(AdapterUse(p_sha),)), adapters)
    assert np.array_equal(via_kohya, via_plain) and np.abs(via_kohya - _pixels(fam, params)).mean() > 0.5
