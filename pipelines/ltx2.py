"""LTX-2 (LTX2ImageToVideoPipeline): video and audio generated together from a first frame."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from pipelines.base import RenderParams, RenderResult, RenderSpec, StepCallback, VideoClip
from pipelines.video_base import VideoFamily

if TYPE_CHECKING:
    import torch



class LTX2Family(VideoFamily):
    """LTX-2: 32x spatial / 8x temporal VAE, joint audio-video transformer, vocoder for the waveform."""

    name: ClassVar[str] = "ltx2"
    tiny_builder: ClassVar[str] = "weights.tiny.ltx2:build_ltx2"
    pipeline_class: ClassVar[str] = "LTX2ImageToVideoPipeline"
    takes_loras: ClassVar[bool] = True
    lora_layouts: ClassVar[frozenset[str]] = frozenset({"comfy"})
    size_multiple: ClassVar[int] = 32
    frame_step: ClassVar[int] = 8
    token_patch: ClassVar[int] = 32  # 32x VAE, 1x1 patches
    vae_spatial: ClassVar[int] = 32
    vae_tile_px: ClassVar[int] = 512
    vae_overlap_px: ClassVar[int] = 64
    supports_audio: ClassVar[bool] = True
    supports_last_frame: ClassVar[bool] = True  # keyframe conditioning (LTX2ConditionPipeline, same weights)
    # diffusers' block registry (what First Block Cache reads a block's outputs by) has no entry for LTX-2's
    # audio-video block, so the step cache cannot attach to it.
    step_cache: ClassVar[bool] = False

    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        from pipelines.previews import token_grid

        # Packed (frames x rows x cols) tokens, 1x1 patches: the middle latent frame's tokens, then denormalised.
        frames = (params.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        per_frame = latents.shape[1] // frames
        middle = frames // 2
        grid = token_grid(latents[:, middle * per_frame:(middle + 1) * per_frame], params.width, params.height)
        vae = pipe.vae
        mean = vae.latents_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
        std = vae.latents_std.view(1, -1, 1, 1).to(grid.device, grid.dtype)
        return grid * std / vae.config.scaling_factor + mean

    def load(self) -> None:
        from diffusers import LTX2ConditionPipeline

        i2v = self._from_pretrained()
        self._use({"i2v": i2v, "keyframes": self.sibling(LTX2ConditionPipeline, i2v)})

    cfg_style: ClassVar[str] = "batch"

    @classmethod
    def true_cfg(cls, params: RenderParams) -> bool:
        # LTX-2's pipelines double the batch (unconditional, conditional) when the video or the audio guidance is
        # above 1; run() leaves the audio guidance at the pipelines' default (7), so every render does.
        return True

    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        import torch

        p = spec.params
        pipe = self.pipeline("i2v")
        self.apply_decode_plan(pipe.vae, self.decode_plan(p))
        first = spec.sources[0].resize((p.width, p.height), Image.Resampling.LANCZOS)
        if len(spec.sources) > 1:
            return self._keyframed(spec, on_step, first)
        with torch.inference_mode():
            out = pipe(
                image=first, prompt=p.prompt, negative_prompt=p.negative_prompt or "", height=p.height, width=p.width,
                num_frames=p.num_frames, frame_rate=float(p.fps), num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale, num_videos_per_prompt=p.num_images,
                generator=self.generators(p.seeds), output_type="np",
                callback_on_step_end=self.step_callback(on_step, p.num_inference_steps),
            )
        return self._clips(out, p, int(pipe.vocoder.config.output_sampling_rate))

    def _keyframed(self, spec: RenderSpec, on_step: StepCallback, first: Image.Image) -> RenderResult:
        """First and last frame: LTX-2's keyframe conditioning (the first frame at latent index 0, the last at the
        final latent frame). The pipeline takes one generator, so each clip is its own call with its own seed."""
        import torch
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

        p = spec.params
        pipe = self.pipeline("keyframes")
        self.apply_decode_plan(pipe.vae, self.decode_plan(p))
        last = spec.sources[1].resize((p.width, p.height), Image.Resampling.LANCZOS)
        clips: list[VideoClip] = []
        for seed in p.seeds:
            with torch.inference_mode():
                out = pipe(
                    conditions=[LTX2VideoCondition(frames=first, index=0), LTX2VideoCondition(frames=last, index=-1)],
                    prompt=p.prompt, negative_prompt=p.negative_prompt or "", height=p.height, width=p.width,
                    num_frames=p.num_frames, frame_rate=float(p.fps), num_inference_steps=p.num_inference_steps,
                    guidance_scale=p.guidance_scale, generator=self.generators((seed,))[0], output_type="np",
                    callback_on_step_end=self.step_callback(on_step, p.num_inference_steps),
                )
            clips += self._clips(out, replace(p, num_images=1), int(pipe.vocoder.config.output_sampling_rate)).videos
        return RenderResult(videos=clips)

    def _clips(self, out: Any, p: RenderParams, rate: int) -> RenderResult:
        clips = []
        for i, frames in enumerate(out.frames):
            audio = None
            if p.generate_audio and out.audio is not None:
                audio = np.asarray(out.audio[i].float().cpu().numpy(), dtype=np.float32)
            clips.append(VideoClip(self.to_uint8_frames(np.asarray(frames)), p.fps, audio, rate if audio is not None else 0))
        return RenderResult(videos=clips)
