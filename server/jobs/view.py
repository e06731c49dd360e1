"""A stored job read through its typed request: the dialects read prompts, seeds, sizes and warnings from here,
never from the stored JSON, so a change to how requests are stored breaks one place and its test."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.base import RenderParams
from server.engine.request import GenerationRequest
from server.jobs.store import JobRecord


@dataclass(frozen=True)
class JobView:
    """A job record with its request typed."""

    record: JobRecord
    request: GenerationRequest

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        """The view of a stored job."""
        return cls(record, GenerationRequest.from_json(record.request))

    @property
    def params(self) -> RenderParams:
        """What was rendered (or will be): prompt, seeds, rendered size, steps, frames..."""
        return self.request.params

    @property
    def warnings(self) -> list[str]:
        """The job's warnings, in the order they were given."""
        return list(self.request.warnings)

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) the client gets."""
        return self.request.output_size

    @property
    def seconds(self) -> int:
        """A clip's length in whole seconds (frames over fps)."""
        return round(self.params.num_frames / max(self.params.fps, 1))

    def inputs(self) -> list[tuple[str, str]]:
        """(role, stored reference) of each input image: sources, references, then the mask."""
        r = self.request
        return ([("source", p) for p in r.source_paths] + [("reference", p) for p in r.reference_paths]
                + ([("mask", r.mask_path)] if r.mask_path else []))
