"""FLUX.2: [klein] 4B (Flux2KleinPipeline, fast, distilled) and [dev] (Flux2Pipeline, quality).

How several images are used: FLUX.2 conditions on a list of images natively
(each becomes its own token block with its own position offset), so source
images and reference images are passed together, sources first; there is no
stitching and nothing is dropped. All of them together are conditioned at
<= 4 MP, each at <= 1 MP.

[klein]: with a mask, Flux2KleinInpaintPipeline (built with `from_pipe`, same
weights) repaints the masked area of the first source, using the other images
as references; the 4K refine is that pipeline with an all-white mask.

[dev]: diffusers has no img2img or inpaint pipeline for it, so it takes no
mask; its 4K refine is img2img through the pipeline's own `latents`/`sigmas`
arguments (the tile's latents noised to the first sigma of the tail of the
schedule, the flow-matching img2img). Its processor needs
pipelines.torchvision_shims without torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from pipelines.base import Family, RenderParams, RenderResult, RenderSpec, StepCallback, Task, fit_within
from pipelines.memory import MemoryCoefficients

# The pipeline's own default guidance, used for refine tiles (the request's guidance shaped the base image).
_DEV_REFINE_GUIDANCE = 4.0
# FLUX.2 rejects conditioning images under 64 px a side. Each conditioning image is capped at ~1 MP (what
# the model was trained with), and all of them together at ~4 MP, so 28 references cost what 4 do.
_MIN_REF_SIDE = 64
_REF_AREA = 1024 * 1024
_TOTAL_REF_AREA = 4 * 1024 * 1024
_INPAINT_MAX_AREA = 1024 * 1024

if TYPE_CHECKING:
    import torch


def _flux2_preview_latents(pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor:
    """FLUX.2's packed, batch-normalised 2x2-patchified latents back to the VAE's 32 channels (its decode, inverted)."""
    import torch

    from pipelines.previews import token_grid

    grid = token_grid(latents, params.width, params.height)
    bn = pipe.vae.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(grid.device, grid.dtype)
    return type(pipe)._unpatchify_latents(grid * std + mean)


class Flux2KleinFamily(Family):
    """FLUX.2 [klein] 4B served through Flux2KleinPipeline / Flux2KleinInpaintPipeline."""

    name: ClassVar[str] = "flux2-klein"
    tiny_builder: ClassVar[str] = "weights.tiny.flux2:build_flux2_klein"
    pipeline_class: ClassVar[str] = "Flux2KleinPipeline"
    size_multiple: ClassVar[int] = 16
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    takes_loras: ClassVar[bool] = True
    lora_layouts: ClassVar[frozenset[str]] = frozenset({"comfy"})
    # FLUX.2 renders up to ~4 MP in one pass, so 2K is native; 4K goes through the tiled refine.
    native_max_long_side: ClassVar[int] = 2048

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients) -> int:
        return _activation_bytes(params, batch, coeffs)

    def load(self) -> None:
        from diffusers import Flux2KleinInpaintPipeline

        pipe = self._from_pretrained()
        self._use({"edit": pipe, "inpaint": self.sibling(Flux2KleinInpaintPipeline, pipe)})

    def refine(self, tile: Image.Image, prompt: str, seed: int, steps: int, strength: float) -> Image.Image:
        """img2img through the inpaint pipeline with an all-white mask (everything may change, a little)."""
        import torch

        mask = Image.new("L", tile.size, 255)
        with torch.inference_mode():
            return self.pipeline("inpaint")(
                image=tile, mask_image=mask, prompt=prompt, height=tile.height, width=tile.width,
                strength=strength, num_inference_steps=steps, guidance_scale=1.0,
                generator=self.generators([seed]),
            ).images[0]


    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        return _flux2_preview_latents(pipe, latents, params)

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        import torch

        p = spec.params
        common: dict[str, object] = dict(
            height=p.height, width=p.width, num_inference_steps=p.num_inference_steps,
            guidance_scale=p.guidance_scale, **p.prompt_kwargs(),
            generator=self.generators(p.seeds),
            callback_on_step_end=self.step_callback(on_step, p.num_inference_steps),
        )
        with torch.inference_mode():
            if p.task is Task.INPAINT:
                assert spec.mask is not None
                src = spec.sources[0].resize((p.width, p.height), Image.Resampling.LANCZOS)
                mask = spec.mask.resize((p.width, p.height), Image.Resampling.NEAREST)
                refs = _conditioning(spec.sources[1:] + spec.references) or None
                # The inpaint pipeline renders at the source's size capped to 1 MP (it ignores height/width):
                # inpaint there, then bring the repainted area up to size over the untouched full-size source.
                work = fit_within(src, _INPAINT_MAX_AREA, 16)
                common |= {"height": work.height, "width": work.width}
                images = self.pipeline("inpaint")(image=work, mask_image=mask.resize(work.size), image_reference=refs,
                                                  strength=p.strength, **common).images
                if work.size != src.size:
                    images = [Image.composite(im.resize(src.size, Image.Resampling.LANCZOS), src, mask)
                              for im in images]
            else:
                cond = _conditioning(spec.sources + spec.references) or None
                images = self.pipeline("edit")(image=cond, **common).images
        return RenderResult(images=list(images))


class Flux2DevFamily(Family):
    """FLUX.2 [dev] served through Flux2Pipeline: generate and multi-reference edit, no mask."""

    name: ClassVar[str] = "flux2-dev"
    tiny_builder: ClassVar[str] = "weights.tiny.flux2:build_flux2_dev"
    pipeline_class: ClassVar[str] = "Flux2Pipeline"
    size_multiple: ClassVar[int] = 16
    sets_cache_context: ClassVar[bool] = False  # Flux2Pipeline calls the transformer bare
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT})
    takes_loras: ClassVar[bool] = True
    lora_layouts: ClassVar[frozenset[str]] = frozenset({"comfy"})
    native_max_long_side: ClassVar[int] = 2048

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients) -> int:
        return _activation_bytes(params, batch, coeffs)

    def load(self) -> None:
        from pipelines import torchvision_shims

        torchvision_shims.apply_pixtral()
        self._use({"edit": self._from_pretrained()})

    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        return _flux2_preview_latents(pipe, latents, params)

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        import torch

        p = spec.params
        cond = _conditioning(spec.sources + spec.references) or None
        with torch.inference_mode():
            images = self.pipeline("edit")(
                image=cond, height=p.height, width=p.width,
                num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
                generator=self.generators(p.seeds), **p.prompt_kwargs(),
                callback_on_step_end=self.step_callback(on_step, p.num_inference_steps),
            ).images
        return RenderResult(images=list(images))

    def refine(self, tile: Image.Image, prompt: str, seed: int, steps: int, strength: float) -> Image.Image:
        """Flow-matching img2img: denoise the tail of a `steps` schedule from the tile's noised latents."""
        import numpy as np
        import torch
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu, retrieve_timesteps

        pipe = self.pipeline("edit")
        kept = max(1, int(steps * strength))
        tail = np.linspace(1.0, 1.0 / steps, steps)[steps - kept:].tolist()
        seq_len = (tile.width // 16) * (tile.height // 16)
        generator = self.generators([seed])[0]
        with torch.inference_mode():
            pixels = pipe.image_processor.preprocess(tile, height=tile.height, width=tile.width)
            clean = pipe._encode_vae_image(pixels.to(pipe.vae.device, pipe.vae.dtype), generator)
            # The pipeline shifts the sigmas it is given (by mu, from the sequence length and step count);
            # setting the same schedule here reads the shifted first sigma the tile must be noised to.
            retrieve_timesteps(pipe.scheduler, kept, pipe.vae.device, sigmas=tail,
                               mu=compute_empirical_mu(image_seq_len=seq_len, num_steps=kept))
            sigma = float(pipe.scheduler.sigmas[0])
            noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(clean.device, clean.dtype)
            latents = (1.0 - sigma) * clean + sigma * noise
            return pipe(prompt=prompt, height=tile.height, width=tile.width, num_inference_steps=kept,
                        sigmas=tail, latents=latents, guidance_scale=_DEV_REFINE_GUIDANCE, generator=generator).images[0]


def _activation_bytes(params: RenderParams, batch: int, c: MemoryCoefficients) -> int:
    """Output tokens (16 px patches) + conditioning tokens (capped area) + text tokens, per image."""
    out_tokens = (params.width // 16) * (params.height // 16)
    n = params.num_sources + params.num_references
    cond_tokens = min(n * _REF_AREA, _TOTAL_REF_AREA) // 256
    per_image = (out_tokens + cond_tokens + c.text_tokens) * c.bytes_per_token
    return batch * params.num_images * per_image + params.width * params.height * c.vae_bytes_per_pixel


def _conditioning(images: tuple[Image.Image, ...]) -> list[Image.Image]:
    """Every conditioning image at >= 64 px a side and within its share of the area budget."""
    area = min(_REF_AREA, _TOTAL_REF_AREA // max(1, len(images)))
    out = []
    for im in images:
        if min(im.size) < _MIN_REF_SIDE:
            scale = _MIN_REF_SIDE / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        out.append(fit_within(im, max(area, _MIN_REF_SIDE * _MIN_REF_SIDE), 16))
    return out
