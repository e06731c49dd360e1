"""A finished render as the job's result: files written to the output store, listed the way task views read them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.engine.request import GenerationRequest
from server.media.fit import fit_frames, fit_image
from server.media.storage import OutputStore

if TYPE_CHECKING:
    # The worker module imports torch; results only read plain arrays and images off a Rendered.
    from server.engine.worker import Rendered


def save_outputs(outputs: OutputStore, request: GenerationRequest, rendered: Rendered) -> dict[str, Any]:
    """Write images or clips (with posters) at the size the client asked for to `outputs`; the result's file
    list."""
    size = request.output_size
    if rendered.videos:
        videos = []
        for clip, seed in zip(rendered.videos, request.seeds, strict=True):
            v = outputs.save_video(fit_frames(clip.frames, size), clip.fps, clip.audio, clip.sample_rate)
            videos.append({"file": v.name, "width": v.width, "height": v.height, "num_frames": v.num_frames,
                           "fps": v.fps, "duration": round(v.num_frames / v.fps, 4), "has_audio": v.has_audio,
                           "content_type": "video/mp4", "seed": seed,
                           "poster": {"file": v.poster.name, "width": v.poster.width,
                                      "height": v.poster.height, "content_type": v.poster.content_type}})
        return {"videos": videos}
    stored = [outputs.save(fit_image(img, size), request.output_format) for img in rendered.images]
    return {"images": [{"file": s.name, "width": s.width, "height": s.height, "content_type": s.content_type,
                        "seed": seed} for s, seed in zip(stored, request.seeds, strict=True)]}


def output_names(result: dict[str, Any]) -> list[str]:
    """Every file a result lists (images, clips and their posters)."""
    names = [i["file"] for i in result.get("images", [])]
    for v in result.get("videos", []):
        names += [v["file"], v["poster"]["file"]]
    return names
