"""GenerationRequest: the one provider-agnostic request every dialect's ask resolves into.

It is plain data that survives a restart: the render's parameters (one `RenderParams`), references to the
normalised input images in the input store (never bytes or tensors), and what the client gets (format, exact
size, warnings). Stored as one flat JSON object, so task views read its fields directly and rows written by
earlier releases still load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pipelines.base import AdapterUse, RenderParams, Task

_PARAM_FIELDS = {f.name for f in fields(RenderParams)}
_TUPLES = ("seeds", "prompts", "negative_prompts", "source_size", "source_paths", "reference_paths", "warnings")


@dataclass(frozen=True)
class GenerationRequest:
    """What to render, fully resolved (defaults applied, size computed, seeds chosen)."""

    model_id: str
    weights: str
    family: str
    params: RenderParams
    output_format: str
    source_paths: tuple[str, ...] = ()
    reference_paths: tuple[str, ...] = ()
    mask_path: str | None = None
    """Input-store references of the normalised inputs (names the input store resolves, local or remote)."""
    warnings: tuple[str, ...] = ()
    priority: int = 0
    previews: bool = False
    """The client asked for live previews of the render (they never change it, so batching ignores this)."""
    start_by: float | None = None
    """Epoch seconds by which a worker must start the job, else it fails `start_timeout` (fal's start deadline)."""
    no_retry: bool = False
    """A failure around the render fails the job at once instead of retrying it (fal's x-fal-no-retry)."""
    continues: str | None = None
    """An extension: the output file of the clip this one continues; the stored result is the two stitched."""
    continues_upload: bool = False
    """`continues` is a client's uploaded clip kept only for this job: removed once stitched."""
    asked: dict[str, Any] = field(default_factory=dict)
    """The client's own choices that resolved into the parameters (tier, aspect ratio, resolution, duration,
    an exact size), kept so the task can be shown and re-run as it was asked."""
    output_width: int = 0
    output_height: int = 0
    """The size the client gets when it differs from the rendered width x height (0: the same); the render is
    cropped or resized to it (server/media/fit.py), since models render only on their size grid."""

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of what the client gets."""
        return self.output_width or self.params.width, self.output_height or self.params.height

    def with_params(self, **changes: Any) -> GenerationRequest:
        """A copy with some render parameters changed."""
        return replace(self, params=replace(self.params, **changes))

    def to_json(self) -> dict[str, Any]:
        """Flat JSON-safe dict for the job store (the render parameters inline)."""
        out = asdict(self)
        out.update(out.pop("params"))
        return out

    @staticmethod
    def output_size_of(data: dict[str, Any]) -> tuple[int, int]:
        """`output_size` of a request as stored (to_json), without rebuilding it."""
        return data.get("output_width") or data["width"], data.get("output_height") or data["height"]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationRequest:
        """Inverse of to_json (also reads rows stored before the parameters were one object)."""
        data = dict(data)
        for key in _TUPLES:
            if key in data:
                data[key] = tuple(data[key])
        data["task"] = Task(data["task"])
        if "loras" in data:
            data["loras"] = tuple(AdapterUse(**u) for u in data["loras"])
        data.pop("image_loras", None)  # a merged call's, never a stored request's
        params = {k: data.pop(k) for k in list(data) if k in _PARAM_FIELDS}
        params.setdefault("num_sources", len(data.get("source_paths", ())))
        params.setdefault("num_references", len(data.get("reference_paths", ())))
        return cls(params=RenderParams(**params), **data)
