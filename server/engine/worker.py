"""One worker per device: owns that device's loaded families and is the only caller of their pipelines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from pipelines.base import Family, RenderSpec, VideoClip
from pipelines.registry import family_class
from server.engine.request import GenerationRequest
from server.media.storage import InputStore
from weights.locate import LocatedWeights

log = logging.getLogger("darkroom.worker")


def _quiet_load_progress() -> None:
    """Per-component progress bars are for notebooks; in a server log they are noise (kept at debug level)."""
    if log.isEnabledFor(logging.DEBUG):
        return
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def resolve_devices(setting: str) -> list[str]:
    """'auto' -> every CUDA device, else ['cpu']; otherwise a comma-separated list."""
    if setting == "auto":
        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    return [d.strip() for d in setting.split(",") if d.strip()]


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """'auto' -> bfloat16 on CUDA, float32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)


@dataclass(frozen=True)
class Rendered:
    """Images or clips of one request plus what it cost."""

    images: list[Image.Image]
    videos: list[VideoClip]
    load_s: float
    pipeline_s: float


class Worker:
    """A device, the families loaded on it, and the thread that alone calls them."""

    def __init__(self, name: str, device: str, dtype: torch.dtype, located: dict[str, LocatedWeights]) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.located = located
        self._families: dict[str, Family] = {}
        self.thread: threading.Thread | None = None
        self.busy_with: tuple[str, ...] = ()

    def loaded(self) -> frozenset[str]:
        """Weights names currently loaded on this worker."""
        return frozenset(self._families)

    def family(self, weights: str) -> tuple[Family, float]:
        """The loaded family for `weights` (loading it on first use) and the seconds spent loading."""
        fam = self._families.get(weights)
        if fam is not None:
            return fam, 0.0
        where = self.located[weights]
        _quiet_load_progress()
        started = time.perf_counter()
        fam = family_class(where.entry.family)(where.path, self.device, self.dtype)
        fam.load()
        self._families[weights] = fam
        elapsed = time.perf_counter() - started
        log.info("loaded %s (%s weights) on %s in %.2fs", weights, "demo" if where.demo else "real",
                 self.device, elapsed)
        return fam, elapsed

    def render(self, request: GenerationRequest, on_step: Callable[[int, int], None]) -> Rendered:
        """Run one request on this device."""
        fam, load_s = self.family(request.weights)
        spec = RenderSpec(
            params=request.render_params(),
            sources=tuple(InputStore.load(p, "RGB") for p in request.source_paths),
            references=tuple(InputStore.load(p, "RGB") for p in request.reference_paths),
            mask=InputStore.load(request.mask_path, "L") if request.mask_path else None,
        )
        started = time.perf_counter()
        result = fam.run(spec, on_step)
        return Rendered(images=result.images, videos=result.videos, load_s=load_s,
                        pipeline_s=time.perf_counter() - started)

    def release_memory(self) -> None:
        """After a job (finished, failed or cancelled): return cached device memory the job left behind."""
        if self.device.startswith("cuda"):
            import gc

            gc.collect()
            torch.cuda.empty_cache()
