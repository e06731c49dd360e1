"""A finished render as the job's result: files written to the output store, listed the way task views read them."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipelines.base import VideoClip
from server.engine.request import GenerationRequest
from server.faults import InputMissing
from server.media.fit import fit_frames, fit_image
from server.media.storage import OutputStore
from server.media.video import decode_frames


def save_outputs(outputs: OutputStore, request: GenerationRequest, images: list[Image.Image],
                 videos: list[VideoClip]) -> dict[str, Any]:
    """Write images or clips (with posters) at the size the client asked for to `outputs`; the result's file
    list."""
    size = request.output_size
    seeds = request.params.seeds
    if videos:
        saved = []
        for clip, seed in zip(videos, seeds, strict=True):
            frames, audio = fit_frames(clip.frames, size), clip.audio
            if request.continues:
                # An extension: the clip it continues, then this one from its second frame (its first is the
                # continued clip's last). The continued clip's audio is not carried over, so the stitched clip has
                # none.
                earlier = outputs.read(request.continues)
                if earlier is None:
                    raise InputMissing("the clip being extended is no longer stored (deleted or expired)")
                frames, audio = np.concatenate([fit_frames(decode_frames(earlier)[0], size), frames[1:]]), None
            v = outputs.save_video(frames, clip.fps, audio, clip.sample_rate)
            saved.append({"file": v.name, "width": v.width, "height": v.height, "num_frames": v.num_frames,
                           "fps": v.fps, "duration": round(v.num_frames / v.fps, 4), "has_audio": v.has_audio,
                           "content_type": "video/mp4", "seed": seed,
                           "poster": {"file": v.poster.name, "width": v.poster.width,
                                      "height": v.poster.height, "content_type": v.poster.content_type}})
        if request.continues and request.continues_upload:
            outputs.remove([request.continues])
        return {"videos": saved}
    stored = [outputs.save(fit_image(img, size), request.output_format) for img in images]
    return {"images": [{"file": s.name, "width": s.width, "height": s.height, "content_type": s.content_type,
                        "seed": seed} for s, seed in zip(stored, seeds, strict=True)]}


def output_names(result: dict[str, Any]) -> list[str]:
    """Every file a result lists (images, clips and their posters)."""
    names = [i["file"] for i in result.get("images", [])]
    for v in result.get("videos", []):
        names += [v["file"], v["poster"]["file"]]
    return names
