"""Small renders the gang tests run on one process and on several, and how their pixels are compared."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipelines.base import RenderParams, Task
from server.engine.work import Completed, RenderWork
from tests.packaged import packaged_config

CONFIG = packaged_config()


def _source() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 40, 200)).save(out, "PNG")
    return out.getvalue()


def render_work(weights: str, guidance: float, negative: str | None = None, steps: int = 3) -> RenderWork:
    """A small render of `weights` (an edit for the image families, a clip for the video ones)."""
    family = CONFIG.manifest[weights].family
    video = family.startswith(("wan", "ltx"))
    params = RenderParams(Task.IMAGE_TO_VIDEO if video else Task.EDIT, "a cat on a wall", 64, 64, 1, (7,), steps,
                          guidance, 1.0, num_sources=1, negative_prompt=negative, num_frames=9 if video else 0,
                          fps=16.0 if video else 0.0)
    return RenderWork(weights, family, params, sources=(_source(),))


def pixels(done: Completed) -> np.ndarray:
    """The first clip's frames or the first image, as floats."""
    if done.videos:
        return done.videos[0].frames.astype(np.float64)
    return np.asarray(done.images[0], dtype=np.float64)
