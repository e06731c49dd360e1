"""FLUX.2 [klein] 4B (Flux2KleinPipeline): fast, distilled, natively multi-reference.

How several images are used: FLUX.2 conditions on a list of images natively
(each becomes its own token block with its own position offset), so source
images and reference images are passed together, sources first; there is no
stitching and nothing is dropped. With a mask, Flux2KleinInpaintPipeline
(built with `from_pipe`, same weights) repaints the masked area of the first
source, using the other images as references.
"""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from pipelines.base import Family, RenderParams, RenderResult, RenderSpec, StepCallback, Task, fit_within

# Uncalibrated, generous (see flux_kontext): hidden 3072 for klein 4B.
_BYTES_PER_TOKEN = 3072 * 2 * 48
_VAE_BYTES_PER_PIXEL = 2048
_TEXT_TOKENS = 512
# FLUX.2 rejects conditioning images under 64 px a side. Each conditioning image is capped at ~1 MP (what
# the model was trained with), and all of them together at ~4 MP, so 28 references cost what 4 do.
_MIN_REF_SIDE = 64
_REF_AREA = 1024 * 1024
_TOTAL_REF_AREA = 4 * 1024 * 1024


class Flux2KleinFamily(Family):
    """FLUX.2 [klein] 4B served through Flux2KleinPipeline / Flux2KleinInpaintPipeline."""

    name: ClassVar[str] = "flux2-klein"
    pipeline_class: ClassVar[str] = "Flux2KleinPipeline"
    size_multiple: ClassVar[int] = 16
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    # FLUX.2 renders up to ~4 MP in one pass, so 2K is native; 4K goes through the tiled refine.
    native_max_long_side: ClassVar[int] = 2048

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int) -> int:
        out_tokens = (params.width // 16) * (params.height // 16)
        n = params.num_sources + params.num_references
        cond_tokens = min(n * _REF_AREA, _TOTAL_REF_AREA) // 256
        per_image = (out_tokens + cond_tokens + _TEXT_TOKENS) * _BYTES_PER_TOKEN
        return batch * params.num_images * per_image + params.width * params.height * _VAE_BYTES_PER_PIXEL

    def load(self) -> None:
        from diffusers import Flux2KleinInpaintPipeline

        pipe = self._from_pretrained()
        self._use({"edit": pipe, "inpaint": Flux2KleinInpaintPipeline.from_pipe(pipe)})

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

    @staticmethod
    def _conditioning(images: tuple[Image.Image, ...]) -> list[Image.Image]:
        area = min(_REF_AREA, _TOTAL_REF_AREA // max(1, len(images)))
        out = []
        for im in images:
            if min(im.size) < _MIN_REF_SIDE:
                scale = _MIN_REF_SIDE / min(im.size)
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
            out.append(fit_within(im, max(area, _MIN_REF_SIDE * _MIN_REF_SIDE), 16))
        return out

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        import torch

        p = spec.params
        common: dict[str, object] = dict(
            prompt=p.prompt, height=p.height, width=p.width, num_inference_steps=p.num_inference_steps,
            guidance_scale=p.guidance_scale, num_images_per_prompt=p.num_images,
            generator=self.generators(p.seeds),
            callback_on_step_end=self.step_callback(on_step, p.num_inference_steps),
        )
        with torch.inference_mode():
            if p.task is Task.INPAINT:
                assert spec.mask is not None
                src = spec.sources[0].resize((p.width, p.height), Image.Resampling.LANCZOS)
                mask = spec.mask.resize((p.width, p.height), Image.Resampling.NEAREST)
                refs = self._conditioning(spec.sources[1:] + spec.references) or None
                images = self.pipeline("inpaint")(image=src, mask_image=mask, image_reference=refs,
                                                  strength=p.strength, **common).images
            else:
                cond = self._conditioning(spec.sources + spec.references) or None
                images = self.pipeline("edit")(image=cond, **common).images
        return RenderResult(images=list(images))
