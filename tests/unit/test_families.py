"""The real diffusers classes behind each family, on the tiny demo weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.base import ParamError, RenderParams, RenderSpec, Task
from pipelines.flux_kontext import FluxKontextFamily
from pipelines.sdxl import SDXLFamily
from weights.safetensors_header import folder_parameter_count


def _params(task: Task, **kw: object) -> RenderParams:
    base = dict(task=task, prompt="p", width=64, height=64, num_images=1, seeds=(3,), num_inference_steps=2,
                guidance_scale=2.5, strength=1.0)
    return RenderParams(**{**base, **kw})  # type: ignore[arg-type]


def test_sdxl_tasks_share_one_copy_of_the_weights(demo_dir: Path) -> None:
    fam = SDXLFamily(demo_dir / "sdxl-base-1.0", "cpu", torch.float32)
    fam.load()
    assert type(fam.pipeline("img2img")).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert type(fam.pipeline("inpaint")).__name__ == "StableDiffusionXLInpaintPipeline"
    for other in (fam.pipeline("inpaint"), fam.pipeline("txt2img")):
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            a, b = getattr(fam.pipeline("img2img"), name), getattr(other, name)
            assert a is b
            assert all(p.data_ptr() == q.data_ptr() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_kontext_inpaint_shares_weights(demo_dir: Path) -> None:
    fam = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32)
    fam.load()
    assert type(fam.pipeline("edit")).__name__ == "FluxKontextPipeline"
    assert type(fam.pipeline("inpaint")).__name__ == "FluxKontextInpaintPipeline"
    assert fam.pipeline("inpaint").transformer is fam.pipeline("edit").transformer
    assert fam.pipeline("inpaint").text_encoder_2 is fam.pipeline("edit").text_encoder_2


def test_pipelines_need_load(demo_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="call load first"):
        SDXLFamily(demo_dir / "sdxl-base-1.0", "cpu", torch.float32).pipeline("img2img")


def test_kontext_keeps_the_requested_size(demo_dir: Path) -> None:
    fam = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32)
    fam.load()
    spec = RenderSpec(_params(Task.EDIT, width=96, height=64, num_sources=1), sources=(Image.new("RGB", (300, 90)),))
    steps: list[tuple[int, int]] = []
    out = fam.run(spec, lambda s, t: steps.append((s, t)))
    assert [im.size for im in out.images] == [(96, 64)]
    assert steps[-1] == (2, 2)


def test_family_is_deterministic_per_seed(demo_dir: Path) -> None:
    fam = SDXLFamily(demo_dir / "sdxl-base-1.0", "cpu", torch.float32)
    fam.load()
    spec = RenderSpec(_params(Task.GENERATE, num_images=2, seeds=(5, 6)))
    a = fam.run(spec, lambda *_: None).images
    b = fam.run(spec, lambda *_: None).images
    assert [x.tobytes() for x in a] == [y.tobytes() for y in b]
    assert a[0].tobytes() != a[1].tobytes()


def test_components_bytes_from_headers(demo_dir: Path) -> None:
    fam = SDXLFamily(demo_dir / "sdxl-base-1.0", "cpu", torch.float32)
    comps = {c.name: c for c in fam.components()}
    assert set(comps) >= {"unet", "vae", "text_encoder", "text_encoder_2"}
    unet_params = folder_parameter_count(demo_dir / "sdxl-base-1.0" / "unet")
    assert comps["unet"].bytes == unet_params * 4
    half = SDXLFamily(demo_dir / "sdxl-base-1.0", "cpu", torch.bfloat16).components()
    assert {c.name: c.bytes for c in half}["unet"] == unet_params * 2


def test_sdxl_rejects_zero_denoising_steps() -> None:
    with pytest.raises(ParamError) as exc:
        SDXLFamily.check(_params(Task.EDIT, num_inference_steps=3, strength=0.3))
    assert exc.value.field == "num_inference_steps"
    SDXLFamily.check(_params(Task.EDIT, num_inference_steps=4, strength=0.25))
    SDXLFamily.check(_params(Task.GENERATE, num_inference_steps=1, strength=0.1))  # strength unused


def test_size_grid_enforced() -> None:
    with pytest.raises(ParamError):
        SDXLFamily.check(_params(Task.GENERATE, width=96))
    FluxKontextFamily.check(_params(Task.GENERATE, width=96))


@pytest.mark.parametrize("family", ["flux-kontext", "flux2-klein", "sdxl"])
def test_masked_edits_need_strength_in_range(family: str) -> None:
    from pipelines.registry import family_class

    cls = family_class(family)
    with pytest.raises(ParamError) as exc:
        cls.check(_params(Task.INPAINT, width=64, height=64, num_sources=1, strength=1.5, num_inference_steps=4))
    assert exc.value.field == "strength"
    cls.check(_params(Task.INPAINT, width=64, height=64, num_sources=1, strength=0.5, num_inference_steps=4))


def test_flux2_dev_refine_is_img2img_on_the_tile(demo_dir: Path) -> None:
    from pipelines.flux2 import Flux2DevFamily

    fam = Flux2DevFamily(demo_dir / "flux2-dev", "cpu", torch.float32)
    fam.load()
    tile = Image.new("RGB", (96, 64), (200, 40, 40))
    a = fam.refine(tile, "p", seed=1, steps=10, strength=0.3)
    assert a.size == (96, 64)
    assert a.tobytes() == fam.refine(tile, "p", seed=1, steps=10, strength=0.3).tobytes()
    assert a.tobytes() != fam.refine(tile, "p", seed=2, steps=10, strength=0.3).tobytes()
    with pytest.raises(ParamError) as exc:
        Flux2DevFamily.check(_params(Task.INPAINT, num_sources=1))
    assert exc.value.field == "task"


def test_sdxl_ip_adapter_references(demo_dir: Path) -> None:
    import numpy as np
    from diffusers import StableDiffusionXLImg2ImgPipeline

    fam = SDXLFamily(demo_dir / "sdxl-base-1.0", "cpu", torch.float32)
    assert {"ip_adapter", "image_encoder"} <= {c.name for c in fam.components() if c.bytes > 0}
    fam.load()
    assert fam.has_ip_adapter
    assert fam.pipeline("inpaint").image_encoder is fam.pipeline("img2img").image_encoder
    src, refs = Image.new("RGB", (64, 64), (200, 0, 0)), (Image.new("RGB", (40, 50), (0, 0, 200)),) * 2
    edit = _params(Task.EDIT, num_sources=1, num_inference_steps=4, strength=0.75, guidance_scale=5.0)
    plain_spec = RenderSpec(edit, sources=(src,))
    steered = fam.run(RenderSpec(replace(edit, num_references=2), sources=(src,), references=refs), _noop).images[0]
    unsteered = fam.run(plain_spec, _noop).images[0]
    assert steered.tobytes() != unsteered.tobytes()
    # Without references the adapter runs at scale 0 on zero embeddings: exactly SDXL without an adapter.
    bare = SDXLFamily(demo_dir / "sdxl-base-1.0", "cpu", torch.float32)
    bare._use({"img2img": StableDiffusionXLImg2ImgPipeline.from_pretrained(demo_dir / "sdxl-base-1.0")})
    assert not bare.has_ip_adapter
    assert np.array_equal(np.asarray(bare.run(plain_spec, _noop).images[0]), np.asarray(unsteered))
    with pytest.raises(ParamError, match="weights pull sdxl-base-1.0"):
        bare.run(RenderSpec(replace(edit, num_references=1), sources=(src,), references=refs[:1]), _noop)
    # References alone: text-to-image steered by the image prompt.
    only_refs = fam.run(RenderSpec(_params(Task.EDIT, num_references=2, guidance_scale=1.0), references=refs), _noop)
    assert only_refs.images[0].size == (64, 64)


def _noop(_done: int, _total: int) -> None:
    pass
