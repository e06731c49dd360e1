"""FLUX.1 Kontext [dev]: instruction edits, text-to-image, and masked edits with an optional reference.

How several images are used: Kontext conditions on one image. A reference image
is either placed side by side with the source into one conditioning image (the
stitching method Kontext's authors and community use for multi-image prompts),
or, with a mask, passed as `image_reference` to FluxKontextInpaintPipeline,
which paints the masked area from it. The inpaint pipeline is built with
`from_pipe`, so both tasks share one copy of the weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from pipelines.base import Family, RenderParams, RenderResult, RenderSpec, StepCallback, Task, fit_within
from pipelines.batching import BatchKey
from pipelines.memory import MemoryCoefficients
from pipelines.step_cache import StepCache

_TRUE_CFG = 2.0

if TYPE_CHECKING:
    import torch



def stitch_side_by_side(images: list[Image.Image], height: int) -> Image.Image:
    """Scale every image to `height` and lay them left to right into one canvas."""
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)
              for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height))
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


class FluxKontextFamily(Family):
    """FLUX.1 Kontext [dev] served through FluxKontextPipeline / FluxKontextInpaintPipeline."""

    name: ClassVar[str] = "flux-kontext"
    tiny_builder: ClassVar[str] = "weights.tiny.flux_kontext:build_flux_kontext"
    pipeline_class: ClassVar[str] = "FluxKontextPipeline"
    size_multiple: ClassVar[int] = 16
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    supports_negative_prompt: ClassVar[bool] = True
    sets_cache_context: ClassVar[bool] = False  # FluxKontext(Inpaint)Pipeline call the transformer bare
    # The pipelines take one conditioning image (and mask) per prompt, so edits from different requests share a
    # call when their conditioning images have one shape (the batch key's source_shape).
    merge_tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    takes_loras: ClassVar[bool] = True
    lora_layouts: ClassVar[frozenset[str]] = frozenset({"kohya-bfl", "xlabs", "comfy"})

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients) -> int:
        c = coeffs
        out_tokens = (params.width // 16) * (params.height // 16)
        # The stitched source (+ references) becomes conditioning tokens beside the output's.
        cond_tokens = out_tokens * (1 + params.num_references) if params.num_sources else 0
        per_image = (out_tokens + cond_tokens + c.text_tokens) * c.bytes_per_token
        return batch * params.num_images * per_image + params.width * params.height * c.vae_bytes_per_pixel

    @classmethod
    def batch_key(cls, params: RenderParams) -> BatchKey:
        """Edits batch only with edits whose conditioning image has the same shape (it is not resized to the
        output: Kontext conditions on the source's own aspect)."""
        key = super().batch_key(params)
        if params.task is Task.EDIT:
            return replace(key, source_shape="x".join(map(str, params.source_size)))
        return key

    def cache_for(self, params: RenderParams) -> tuple[StepCache, str | None]:
        """No step cache under true CFG: the conditional and unconditional passes would share one cache state."""
        cache, why = super().cache_for(params)
        if cache.kind != "none" and params.negative_prompt is not None:
            return StepCache(), "a negative prompt runs true CFG (two passes per step); the step cache is off for it"
        return cache, why

    def load(self) -> None:
        from diffusers import FluxKontextInpaintPipeline

        pipe = self._from_pretrained()
        # from_pipe shares every module with `pipe`: no second copy of the weights.
        self._use({"edit": pipe, "inpaint": self.sibling(FluxKontextInpaintPipeline, pipe)})

    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        from pipelines.previews import token_grid

        # Packed 2x2 patches of the 16-channel latent, scaled and shifted (FluxKontextPipeline's decode, inverted).
        grid = token_grid(latents, params.width, params.height)
        b, d, h, w = grid.shape
        raw = grid.reshape(b, d // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, d // 4, h * 2, w * 2)
        return raw / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor

    @classmethod
    def true_cfg(cls, params: RenderParams) -> bool:
        # true CFG runs only when a negative prompt is given (see run).
        return bool(params.negative_prompt)

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        p = spec.params
        area = p.width * p.height
        common: dict[str, object] = dict(
            **p.prompt_kwargs(),
            height=p.height,
            width=p.width,
            num_inference_steps=p.num_inference_steps,
            guidance_scale=p.guidance_scale,
            generator=self.generators(p.seeds),
            # Kontext otherwise snaps to a ~1 MP bucket and ignores the requested size.
            max_area=area,
            _auto_resize=False,
            # Kontext is guidance-distilled: a negative prompt works only through true classifier-free
            # guidance, which runs the transformer twice per step; it is enabled only when one is given.
            negative_prompt=p.negative_kwarg(),
            true_cfg_scale=_TRUE_CFG if p.negative_prompt else 1.0,
            callback_on_step_end=self.step_callback(on_step, p.num_inference_steps),
        )
        import torch

        # One input per prompt: a single request's inputs, or each merged request's own (one per image).
        rows = range(len(p.prompts)) if spec.merged else range(1)
        with torch.inference_mode():
            if p.task is Task.GENERATE:
                images = self.pipeline("edit")(**common).images
            elif p.task is Task.EDIT:
                conds = [self._condition(*spec.image_inputs(i)[:2], area) for i in rows]
                images = self.pipeline("edit")(image=conds if spec.merged else conds[0], **common).images
            else:
                srcs, masks, refs = [], [], []
                for i in rows:
                    sources, references, mask = spec.image_inputs(i)
                    assert mask is not None
                    srcs.append(sources[0].resize((p.width, p.height), Image.Resampling.LANCZOS))
                    masks.append(mask.resize((p.width, p.height), Image.Resampling.NEAREST))
                    refs.append(fit_within(references[0], area, self.size_multiple) if references else None)
                one = not spec.merged
                images = self.pipeline("inpaint")(
                    image=srcs[0] if one else srcs, mask_image=masks[0] if one else masks,
                    image_reference=refs[0] if one or refs[0] is None else refs, strength=p.strength, **common
                ).images
        return RenderResult(images=list(images))

    def _condition(self, sources: tuple[Image.Image, ...], references: tuple[Image.Image, ...],
                   area: int) -> Image.Image:
        """The conditioning image: the source, with references laid beside it, at the output's area."""
        cond = sources[0]
        if references:
            cond = stitch_side_by_side([cond, *references], cond.height)
        return fit_within(cond, area * (1 + len(references)), self.size_multiple)
