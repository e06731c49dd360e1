"""GenerationRequest: the one provider-agnostic request every dialect translates into.

It is plain data that survives a restart: images are referenced by the path of
their normalised copy under the data dir, never carried as bytes or tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.base import RenderParams, Task


@dataclass(frozen=True)
class GenerationRequest:
    """What to render, fully resolved (defaults applied, size computed, seeds chosen)."""

    model_id: str
    weights: str
    family: str
    task: Task
    prompt: str
    width: int
    height: int
    num_images: int
    seeds: tuple[int, ...]
    num_inference_steps: int
    guidance_scale: float
    strength: float
    output_format: str
    source_paths: tuple[str, ...] = ()
    reference_paths: tuple[str, ...] = ()
    mask_path: str | None = None
    warnings: tuple[str, ...] = field(default=())
    negative_prompt: str | None = None
    num_frames: int = 0
    fps: float = 0.0
    generate_audio: bool = False
    prompts: tuple[str, ...] = ()
    """Per-image prompts of a merged batch (several requests in one call); empty for one request."""
    priority: int = 0
    output_width: int = 0
    output_height: int = 0
    """The size the client gets when it differs from the rendered width x height (0: the same); the render is
    cropped or resized to it (server/media/fit.py), since models render only on their size grid."""

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of what the client gets."""
        return self.output_width or self.width, self.output_height or self.height

    def render_params(self) -> RenderParams:
        """The pixel-free part handed to the family."""
        return RenderParams(
            task=self.task,
            prompt=self.prompt,
            width=self.width,
            height=self.height,
            num_images=self.num_images,
            seeds=self.seeds,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            strength=self.strength,
            num_sources=len(self.source_paths),
            num_references=len(self.reference_paths),
            negative_prompt=self.negative_prompt,
            num_frames=self.num_frames,
            fps=self.fps,
            generate_audio=self.generate_audio,
            prompts=self.prompts,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict for the job store."""
        return asdict(self)

    @staticmethod
    def output_size_of(data: dict[str, Any]) -> tuple[int, int]:
        """`output_size` of a request as stored (to_json), without rebuilding it."""
        return data.get("output_width") or data["width"], data.get("output_height") or data["height"]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationRequest:
        """Inverse of to_json."""
        data = dict(data)
        data["task"] = Task(data["task"])
        for key in ("seeds", "source_paths", "reference_paths", "warnings", "prompts"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)
