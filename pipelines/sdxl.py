"""SDXL 1.0 base: img2img variations, inpainting and text-to-image on one set of weights.

The img2img pipeline owns the modules; the inpaint and text-to-image pipelines
are built from it with `from_pipe`, so the three tasks share one copy of the
weights (SDXL base's 4-channel UNet inpaints by blending masked latents).

How several images are used: SDXL edits one source image (img2img or inpaint);
reference images are image prompts through the IP-Adapter (h94
ip-adapter_sdxl, pulled with the base weights into `ip_adapter/`): each
reference is CLIP-encoded into 4 extra cross-attention tokens that steer
style and subject, at scale 0.6. References without a source generate from
text + image prompt (variations). The adapter is loaded before the other roles
are built with `from_pipe`, so all three share it; calls without references
give it zero embeddings at scale 0, which leaves SDXL's output unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from pipelines.base import (
    ComponentInfo,
    Family,
    ParamError,
    RenderParams,
    RenderResult,
    RenderSpec,
    StepCallback,
    Task,
    dtype_bytes,
)
from pipelines.memory import MemoryCoefficients
from weights.safetensors_header import file_bytes_at, folder_bytes_at

IP_ADAPTER_FOLDER = "ip_adapter"
_IP_ADAPTER_SUBFOLDER = "sdxl_models"
_IP_ADAPTER_FILE = "ip-adapter_sdxl.safetensors"
# h94's suggested range is 0.5-0.7: the references steer, the prompt still leads.
IP_ADAPTER_SCALE = 0.6
# What the img2img pipeline uses when not told (refine tiles do not pass a guidance of their own).
_IMG2IMG_DEFAULT_GUIDANCE = 5.0

if TYPE_CHECKING:
    import torch



class SDXLFamily(Family):
    """SDXL base served through StableDiffusionXL{Img2Img,Inpaint,}Pipeline."""

    name: ClassVar[str] = "sdxl"
    tiny_builder: ClassVar[str] = "weights.tiny.sdxl:build_sdxl"
    pipeline_class: ClassVar[str] = "StableDiffusionXLImg2ImgPipeline"
    size_multiple: ClassVar[int] = 64
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    supports_negative_prompt: ClassVar[bool] = True
    img2img_strength: ClassVar[bool] = True
    denoisers: ClassVar[tuple[str, ...]] = ("unet",)
    attention_dispatch: ClassVar[bool] = False  # the UNet's processors call SDPA directly
    step_cache: ClassVar[bool] = False  # UNet2DConditionModel takes no diffusers cache hooks
    merge_tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT, Task.INPAINT})
    takes_loras: ClassVar[bool] = True
    lora_layouts: ClassVar[frozenset[str]] = frozenset({"kohya-sgm"})

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
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients) -> int:
        # UNet activations per latent pixel (8x VAE), per image; VAE decode per output pixel.
        c = coeffs
        latent_pixels = (params.width // 8) * (params.height // 8)
        unet = batch * params.num_images * latent_pixels * c.bytes_per_token
        return unet + params.width * params.height * c.vae_bytes_per_pixel

    def components(self, variant: str = "bf16") -> list[ComponentInfo]:
        """The pipeline's components plus the IP-Adapter and its image encoder when present (never quantized)."""
        out = super().components(variant)
        root = self._ip_adapter_root()
        if root.is_dir():
            size = dtype_bytes(self.dtype)
            out.append(ComponentInfo("ip_adapter", "IPAdapter", file_bytes_at(root / _IP_ADAPTER_FILE, size)))
            out.append(ComponentInfo("image_encoder", "CLIPVisionModelWithProjection",
                                     folder_bytes_at(root / "image_encoder", size)))
        return out

    def _ip_adapter_root(self) -> Path:
        return self.model_dir / IP_ADAPTER_FOLDER / _IP_ADAPTER_SUBFOLDER

    unsupported_variants_why: ClassVar[str] = ("SDXL runs bf16 while its IP-Adapter is installed (diffusers' "
                                               "IP-Adapter loader casts the UNet, which a quantized UNet refuses)")
    addons_block_variants: ClassVar[bool] = True

    def supported_variants(self) -> frozenset[str]:
        """bf16 only while the IP-Adapter is installed (see `unsupported_variants_why`; the UNet is 5 GB and fits
        every card resident anyway)."""
        return frozenset({"bf16"}) if self._ip_adapter_root().is_dir() else super().supported_variants()

    def no_fusing(self) -> str | None:
        if self.has_ip_adapter:
            return "the IP-Adapter's attention processors keep separate key/value projections for image prompts"
        return None

    @property
    def has_ip_adapter(self) -> bool:
        """Whether the loaded pipelines carry the IP-Adapter (reference images need it)."""
        return getattr(self.pipelines.get("img2img"), "image_encoder", None) is not None

    def load(self) -> None:
        from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

        pipe = self._from_pretrained()
        if (self._ip_adapter_root() / _IP_ADAPTER_FILE).is_file():
            # Before from_pipe, so the other roles get the image encoder and the adapted UNet too.
            pipe.load_ip_adapter(str(self.model_dir / IP_ADAPTER_FOLDER), subfolder=_IP_ADAPTER_SUBFOLDER,
                                 weight_name=_IP_ADAPTER_FILE, image_encoder_folder="image_encoder")
            pipe.image_encoder.to(self.device, self.dtype)
        # The img2img pipeline owns the modules; the other roles share them through from_pipe.
        self._use({
            "img2img": pipe,
            "inpaint": self.sibling(StableDiffusionXLInpaintPipeline, pipe),
            "txt2img": self.sibling(StableDiffusionXLPipeline, pipe),
        })

    def refine(self, tile: Image.Image, prompt: str, seed: int, steps: int, strength: float) -> Image.Image:
        """Plain SDXL img2img of one tile."""
        import torch

        with torch.inference_mode():
            return self.pipeline("img2img")(image=tile, prompt=prompt, strength=strength, num_inference_steps=steps,
                                            generator=self.generators([seed]),
                                            **self._image_prompt((), _IMG2IMG_DEFAULT_GUIDANCE)).images[0]

    def _image_prompt(self, references: tuple[Image.Image, ...], guidance_scale: float,
                      prompts: int = 1) -> dict[str, object]:
        """IP-Adapter arguments: the references at IP_ADAPTER_SCALE, or zero embeddings at scale 0
        (one row per prompt: diffusers repeats image embeddings per image, not per prompt)."""
        if not self.has_ip_adapter:
            if references:
                raise ParamError("reference_images", "these SDXL weights have no IP-Adapter; run `darkroom weights "
                                 "pull sdxl-base-1.0` to fetch it, or send no reference_images")
            return {}
        import torch

        pipe = self.pipeline("img2img")
        if references:
            pipe.set_ip_adapter_scale(IP_ADAPTER_SCALE)
            return {"ip_adapter_image": [list(references)]}
        pipe.set_ip_adapter_scale(0.0)
        # One (negative, positive) pair of image embeddings when the pipeline runs classifier-free guidance.
        rows = (2 if guidance_scale > 1.0 else 1) * prompts
        enc = pipe.image_encoder
        zeros = torch.zeros(rows, 1, enc.config.projection_dim, device=enc.device, dtype=enc.dtype)
        return {"ip_adapter_image_embeds": [zeros]}

    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        return latents / pipe.vae.config.scaling_factor

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        p = spec.params
        common: dict[str, object] = dict(
            **p.prompt_kwargs(),
            negative_prompt=p.negative_kwarg(),
            num_inference_steps=p.num_inference_steps,
            guidance_scale=p.guidance_scale,
            generator=self.generators(p.seeds),
            **self._image_prompt(spec.references, p.guidance_scale, len(p.prompts) or 1),
        )
        # img2img runs int(steps*strength) steps, which is what progress counts.
        text_only = p.task is Task.GENERATE or not spec.sources  # references alone: image-prompted generation
        denoise_steps = p.num_inference_steps if text_only else self.denoising_steps(p)
        common["callback_on_step_end"] = self.step_callback(on_step, denoise_steps)
        import torch

        with torch.inference_mode():
            if text_only:
                images = self.pipeline("txt2img")(height=p.height, width=p.width, **common).images
            else:
                # One source (and mask) per prompt: a single request's, or each merged request's own.
                rows = [spec.image_inputs(i) for i in (range(len(p.prompts)) if spec.merged else range(1))]
                srcs = [s[0].resize((p.width, p.height), Image.Resampling.LANCZOS) for s, _r, _m in rows]
                image = srcs if spec.merged else srcs[0]
                if p.task is Task.EDIT:
                    images = self.pipeline("img2img")(image=image, strength=p.strength, **common).images
                else:
                    masks = [m.resize((p.width, p.height), Image.Resampling.NEAREST) for _s, _r, m in rows
                             if m is not None]
                    images = self.pipeline("inpaint")(
                        image=image, mask_image=masks if spec.merged else masks[0], height=p.height, width=p.width,
                        strength=p.strength, **common).images
        return RenderResult(images=list(images))

    @classmethod
    def can_merge(cls, params: RenderParams) -> bool:
        """Edits and inpaints merge (img2img and inpaint take one image per prompt); not with reference images,
        whose IP-Adapter embeddings would have to be lined up per prompt."""
        return super().can_merge(params) and params.num_references == 0
