"""Qwen-Image-Edit-2511 (QwenImageEditPlusPipeline): realistic, subject-keeping edits from several images.

How several images are used: natively. The Plus pipeline takes a list of
images; each is described to the Qwen2.5-VL encoder as "Picture i" and also
VAE-encoded as its own conditioning block, so sources and references are
passed together, sources first. The model is at its best with 1 to 3 images.
Text-only requests run QwenImagePipeline built with `from_pipe` (same weights).
The Qwen2-VL processor needs pipelines.torchvision_shims on installs without torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pipelines.base import Family, RenderParams, RenderResult, RenderSpec, StepCallback, Task
from pipelines.memory import MemoryCoefficients

# Each conditioning image is VAE-encoded at ~1 MP (hard-coded in the pipeline): 4096 tokens of 16 px patches.
_COND_TOKENS = 1024 * 1024 // 256

if TYPE_CHECKING:
    import torch



class QwenImageEditFamily(Family):
    """Qwen-Image-Edit-2511 served through QwenImageEditPlusPipeline (and QwenImagePipeline for text only)."""

    name: ClassVar[str] = "qwen-image-edit"
    tiny_builder: ClassVar[str] = "weights.tiny.qwen_image:build_qwen_image_edit"
    pipeline_class: ClassVar[str] = "QwenImageEditPlusPipeline"
    size_multiple: ClassVar[int] = 16
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE, Task.EDIT})
    takes_loras: ClassVar[bool] = True
    lora_layouts: ClassVar[frozenset[str]] = frozenset({"comfy"})
    supports_negative_prompt: ClassVar[bool] = True

    @classmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients) -> int:
        c = coeffs
        out_tokens = (params.width // 16) * (params.height // 16)
        cond = (params.num_sources + params.num_references) * _COND_TOKENS
        # True classifier-free guidance runs the transformer twice per step.
        cfg = 2 if params.guidance_scale > 1.0 else 1
        per_image = (out_tokens + cond + c.text_tokens) * c.bytes_per_token * cfg
        return batch * params.num_images * per_image + params.width * params.height * c.vae_bytes_per_pixel

    def load(self) -> None:
        from pipelines import torchvision_shims

        torchvision_shims.apply_qwen2vl()
        from diffusers import QwenImagePipeline

        pipe = self._from_pretrained()
        self._use({"edit": pipe, "generate": self.sibling(QwenImagePipeline, pipe)})

    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        import torch

        from pipelines.previews import token_grid

        grid = token_grid(latents, params.width, params.height)
        b, d, h, w = grid.shape
        raw = grid.reshape(b, d // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, d // 4, h * 2, w * 2)
        cfg = pipe.vae.config
        mean = torch.tensor(cfg.latents_mean, device=raw.device, dtype=raw.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=raw.device, dtype=raw.dtype).view(1, -1, 1, 1)
        return raw * std + mean

    @classmethod
    def true_cfg(cls, params: RenderParams) -> bool:
        # guidance_scale is Qwen's true_cfg_scale, always with a negative prompt (" " when none is given).
        return params.guidance_scale > 1.0

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        import torch

        p = spec.params
        common: dict[str, object] = dict(
            height=p.height, width=p.width, num_inference_steps=p.num_inference_steps,
            # guidance_scale maps to Qwen's true CFG; 1.0 turns it off (one transformer pass per step).
            true_cfg_scale=p.guidance_scale, negative_prompt=p.negative_kwarg(" "),
            generator=self.generators(p.seeds), **p.prompt_kwargs(),
            callback_on_step_end=self.step_callback(on_step, p.num_inference_steps),
        )
        with torch.inference_mode():
            if p.task is Task.GENERATE:
                images = self.pipeline("generate")(**common).images
            else:
                images = self.pipeline("edit")(image=list(spec.sources + spec.references), **common).images
        return RenderResult(images=list(images))
