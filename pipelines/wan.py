"""Wan 2.2 image-to-video (WanImageToVideoPipeline): TI2V-5B (fast) and I2V-A14B (two experts, quality).

Both are silent. A14B can end on a given last frame (`last_image`); TI2V-5B
conditions on the first frame only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from pipelines.base import RenderParams, RenderResult, RenderSpec, StepCallback, VideoClip
from pipelines.video_base import VideoFamily

if TYPE_CHECKING:
    import torch



class WanVideoFamily(VideoFamily):
    """Shared by both Wan 2.2 layouts; subclasses set their latent token size (token_patch)."""

    pipeline_class: ClassVar[str] = "WanImageToVideoPipeline"
    takes_loras: ClassVar[bool] = True
    lora_layouts: ClassVar[frozenset[str]] = frozenset({"comfy"})
    frame_step: ClassVar[int] = 4
    max_frames: ClassVar[int] = 289  # 12 s at 24 fps (Sora's longest clip)
    vae_tile_px: ClassVar[int] = 256
    vae_overlap_px: ClassVar[int] = 64

    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        import torch

        cfg = pipe.vae.config
        frame = latents[:, :, latents.shape[2] // 2]
        mean = torch.tensor(cfg.latents_mean, device=frame.device, dtype=frame.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=frame.device, dtype=frame.dtype).view(1, -1, 1, 1)
        return frame * std + mean

    @classmethod
    def true_cfg(cls, params: RenderParams) -> bool:
        # Wan runs its negative prompt as a second pass whenever guidance is above 1.
        return params.guidance_scale > 1.0

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        import torch

        p = spec.params
        pipe = self.pipeline("i2v")
        self.apply_decode_plan(pipe.vae, self.decode_plan(p))
        first = spec.sources[0].resize((p.width, p.height), Image.Resampling.LANCZOS)
        last = spec.sources[1].resize((p.width, p.height), Image.Resampling.LANCZOS) if len(spec.sources) > 1 else None
        extra = {"last_image": last} if last is not None else {}
        with torch.inference_mode():
            out = pipe(
                image=first, prompt=p.prompt, negative_prompt=p.negative_prompt, height=p.height, width=p.width,
                num_frames=p.num_frames, num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale, num_videos_per_prompt=p.num_images,
                generator=self.generators(p.seeds), output_type="np",
                callback_on_step_end=self.step_callback(on_step, p.num_inference_steps), **extra,
            )
        return RenderResult(videos=[VideoClip(self.to_uint8_frames(v), p.fps) for v in out.frames])


class WanTI2V5BFamily(WanVideoFamily):
    """Wan 2.2 TI2V-5B: 16x VAE (with 2x patchify), 720p at 24 fps natively, one transformer."""

    name: ClassVar[str] = "wan2.2-ti2v-5b"
    tiny_builder: ClassVar[str] = "weights.tiny.wan:build_wan_ti2v_5b"
    size_multiple: ClassVar[int] = 32
    token_patch: ClassVar[int] = 32  # 16x VAE, 2x2 patches
    vae_spatial: ClassVar[int] = 16  # 8x VAE after a 2x patchify


class WanI2VA14BFamily(WanVideoFamily):
    """Wan 2.2 I2V-A14B: 8x VAE, a high-noise and a low-noise 14B expert, 16 fps natively."""

    name: ClassVar[str] = "wan2.2-i2v-a14b"
    tiny_builder: ClassVar[str] = "weights.tiny.wan:build_wan_i2v_a14b"
    size_multiple: ClassVar[int] = 16
    token_patch: ClassVar[int] = 16  # 8x VAE, 2x2 patches
    denoisers: ClassVar[tuple[str, ...]] = ("transformer", "transformer_2")  # high- and low-noise experts
    vae_spatial: ClassVar[int] = 8
    supports_last_frame: ClassVar[bool] = True
