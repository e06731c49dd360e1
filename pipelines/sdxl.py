"""SDXL 1.0 base: img2img variations, inpainting and text-to-image on one set of weights.

The img2img pipeline owns the modules; the inpaint and text-to-image pipelines
are built from it with `from_pipe`, so the three tasks share one copy of the
weights (SDXL base's 4-channel UNet inpaints by blending masked latents).
SDXL takes one source image; it has no native multi-image conditioning.
"""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from pipelines.base import Family, ParamError, RenderParams, RenderResult, RenderSpec, StepCallback, Task


# Uncalibrated and generous (see flux_kontext): UNet activations per latent
# pixel per image (x2 for classifier-free guidance), VAE decode per pixel.
_UNET_BYTES_PER_LATENT_PIXEL = 320 * 2 * 48 * 2
_VAE_BYTES_PER_PIXEL = 1536


class SDXLFamily(Family):
    """SDXL base served through StableDiffusionXL{Img2Img,Inpaint,}Pipeline."""

    name: ClassVar[str] = "sdxl"
    pipeline_class: ClassVar[str] = "StableDiffusionXLImg2ImgPipeline"
    size_multiple: ClassVar[int] = 64
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    supports_negative_prompt: ClassVar[bool] = True
    img2img_strength: ClassVar[bool] = True

    @classmethod
    def check(cls, params: RenderParams) -> None:
        super().check(params)
        if params.task is Task.GENERATE:
            return
        if not 0.0 < params.strength <= 1.0:
            raise ParamError("strength", "strength must be in (0, 1]")
        # diffusers runs int(steps * strength) denoising steps; zero crashes deep inside the scheduler.
        if int(params.num_inference_steps * params.strength) < 1:
            raise ParamError(
                "num_inference_steps",
                f"num_inference_steps x strength must be at least 1 (got {params.num_inference_steps} x "
                f"{params.strength}); raise num_inference_steps or strength",
            )

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int) -> int:
        latent_pixels = (params.width // 8) * (params.height // 8)
        unet = batch * params.num_images * latent_pixels * _UNET_BYTES_PER_LATENT_PIXEL
        return unet + params.width * params.height * _VAE_BYTES_PER_PIXEL

    def load(self) -> None:
        from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

        pipe = self._from_pretrained()
        # The img2img pipeline owns the modules; the other roles share them through from_pipe.
        self._use({
            "img2img": pipe,
            "inpaint": StableDiffusionXLInpaintPipeline.from_pipe(pipe),
            "txt2img": StableDiffusionXLPipeline.from_pipe(pipe),
        })

    def refine(self, tile: Image.Image, prompt: str, seed: int, steps: int, strength: float) -> Image.Image:
        """Plain SDXL img2img of one tile."""
        import torch

        with torch.inference_mode():
            return self.pipeline("img2img")(image=tile, prompt=prompt, strength=strength, num_inference_steps=steps,
                                            generator=self.generators([seed])).images[0]

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        p = spec.params
        common: dict[str, object] = dict(
            prompt=p.prompt,
            negative_prompt=p.negative_prompt,
            num_inference_steps=p.num_inference_steps,
            guidance_scale=p.guidance_scale,
            num_images_per_prompt=p.num_images,
            generator=self.generators(p.seeds),
        )
        # img2img runs int(steps*strength) steps, which is what progress counts.
        denoise_steps = p.num_inference_steps if p.task is Task.GENERATE else int(p.num_inference_steps * p.strength)
        common["callback_on_step_end"] = self.step_callback(on_step, denoise_steps)
        import torch

        with torch.inference_mode():
            if p.task is Task.GENERATE:
                images = self.pipeline("txt2img")(height=p.height, width=p.width, **common).images
            else:
                src = spec.sources[0].resize((p.width, p.height), Image.Resampling.LANCZOS)
                if p.task is Task.EDIT:
                    images = self.pipeline("img2img")(image=src, strength=p.strength, **common).images
                else:
                    assert spec.mask is not None
                    mask = spec.mask.resize((p.width, p.height), Image.Resampling.NEAREST)
                    images = self.pipeline("inpaint")(
                        image=src, mask_image=mask, height=p.height, width=p.width, strength=p.strength, **common
                    ).images
        return RenderResult(images=list(images))
