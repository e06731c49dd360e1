"""FLUX.1 Kontext [dev]: instruction edits, text-to-image, and masked edits with an optional reference.

How several images are used: Kontext conditions on one image. A reference image
is either placed side by side with the source into one conditioning image (the
stitching method Kontext's authors and community use for multi-image prompts),
or, with a mask, passed as `image_reference` to FluxKontextInpaintPipeline,
which paints the masked area from it. The inpaint pipeline is built with
`from_pipe`, so both tasks share one copy of the weights.
"""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from pipelines.base import Family, RenderParams, RenderResult, RenderSpec, StepCallback, Task, fit_within
from pipelines.memory import MemoryCoefficients, coefficients

_TRUE_CFG = 2.0


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
    pipeline_class: ClassVar[str] = "FluxKontextPipeline"
    size_multiple: ClassVar[int] = 16
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    supports_negative_prompt: ClassVar[bool] = True

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients | None = None) -> int:
        c = coeffs or coefficients(cls.name)
        out_tokens = (params.width // 16) * (params.height // 16)
        # The stitched source (+ references) becomes conditioning tokens beside the output's.
        cond_tokens = out_tokens * (1 + params.num_references) if params.num_sources else 0
        per_image = (out_tokens + cond_tokens + c.text_tokens) * c.bytes_per_token
        return batch * params.num_images * per_image + params.width * params.height * c.vae_bytes_per_pixel

    def load(self) -> None:
        from diffusers import FluxKontextInpaintPipeline

        pipe = self._from_pretrained()
        # from_pipe shares every module with `pipe`: no second copy of the weights.
        self._use({"edit": pipe, "inpaint": FluxKontextInpaintPipeline.from_pipe(pipe)})

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

        with torch.inference_mode():
            if p.task is Task.GENERATE:
                images = self.pipeline("edit")(**common).images
            elif p.task is Task.EDIT:
                cond = spec.sources[0]
                if spec.references:
                    cond = stitch_side_by_side([cond, *spec.references], cond.height)
                cond = fit_within(cond, area * (1 + len(spec.references)), self.size_multiple)
                images = self.pipeline("edit")(image=cond, **common).images
            else:
                assert spec.mask is not None
                src = spec.sources[0].resize((p.width, p.height), Image.Resampling.LANCZOS)
                mask = spec.mask.resize((p.width, p.height), Image.Resampling.NEAREST)
                ref = fit_within(spec.references[0], area, self.size_multiple) if spec.references else None
                images = self.pipeline("inpaint")(
                    image=src, mask_image=mask, image_reference=ref, strength=p.strength, **common
                ).images
        return RenderResult(images=list(images))
