"""One worker per device: owns that device's loaded families and is the only caller of their pipelines."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image

from pipelines.base import Family, RenderParams, RenderSpec, VideoClip
from pipelines.registry import family_class
from server.engine.request import GenerationRequest
from server.engine.residency import Resident, fits, plan_evictions
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


def device_budget(device: str, reserve_bytes: int) -> int | None:
    """Bytes models and activations may use on `device`: total memory less a reserve (None on CPU)."""
    if not device.startswith("cuda"):
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory - reserve_bytes


class Worker:
    """A device, the families loaded on it, and the thread that alone calls them."""

    def __init__(self, name: str, device: str, dtype: torch.dtype, located: dict[str, LocatedWeights],
                 budget: int | None = None) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.located = located
        self.budget = budget
        # Insertion order is recency: a family moves to the end each time it is used.
        self._families: OrderedDict[str, Family] = OrderedDict()
        self._weight_bytes: dict[str, int] = {}
        self.thread: threading.Thread | None = None
        self.busy_with: tuple[str, ...] = ()

    def loaded(self) -> frozenset[str]:
        """Weights names currently loaded on this worker."""
        return frozenset(self._families)

    def _new_family(self, weights: str) -> Family:
        where = self.located[weights]
        return family_class(where.entry.family)(where.path, self.device, self.dtype)

    def weight_bytes(self, weights: str) -> int:
        """Bytes of `weights` at this worker's dtype, from the safetensors headers (cached)."""
        if weights not in self._weight_bytes:
            self._weight_bytes[weights] = sum(c.bytes for c in self._new_family(weights).components())
        return self._weight_bytes[weights]

    def _residents(self) -> list[Resident]:
        return [Resident(name, self.weight_bytes(name)) for name in self._families]

    def preload(self, names: list[str]) -> None:
        """Load `names` in order while they fit the budget without evicting one another."""
        for weights in names:
            if fits(self._residents(), self.weight_bytes(weights), self.budget):
                self.family(weights)
            else:
                log.info("not preloading %s on %s: %.1f GB would exceed the %.1f GB budget; it loads on demand",
                         weights, self.device, self.weight_bytes(weights) / 1e9, (self.budget or 0) / 1e9)

    def family(self, weights: str, activation_bytes: int = 0) -> tuple[Family, float]:
        """The loaded family for `weights` (loading it, after making room, on first use) and the load seconds."""
        for name in plan_evictions(self._residents(), weights, 0 if weights in self._families else
                                   self.weight_bytes(weights), activation_bytes, self.budget):
            self.unload(name)
        fam = self._families.get(weights)
        if fam is not None:
            self._families.move_to_end(weights)
            return fam, 0.0
        where = self.located[weights]
        _quiet_load_progress()
        started = time.perf_counter()
        fam = self._new_family(weights)
        fam.load()
        self._families[weights] = fam
        elapsed = time.perf_counter() - started
        log.info("loaded %s (%s weights) on %s in %.2fs", weights, "demo" if where.demo else "real",
                 self.device, elapsed)
        return fam, elapsed

    def unload(self, weights: str) -> None:
        """Drop a family and every reference to its pipelines, then return the memory to the device."""
        fam = self._families.pop(weights, None)
        if fam is None:
            return
        fam.pipelines.clear()
        del fam
        log.info("evicted %s from %s to make room", weights, self.device)
        self.release_memory()

    def render(self, request: GenerationRequest, on_step: Callable[[int, int], None]) -> Rendered:
        """Run one request on this device."""
        params = request.render_params()
        fam_class = family_class(request.family)
        fam, load_s = self.family(request.weights, fam_class.activation_bytes(params, 1))
        spec = RenderSpec(
            params=params,
            sources=tuple(InputStore.load(p, "RGB") for p in request.source_paths),
            references=tuple(InputStore.load(p, "RGB") for p in request.reference_paths),
            mask=InputStore.load(request.mask_path, "L") if request.mask_path else None,
        )
        started = time.perf_counter()
        chunk = self.images_per_call(request.weights, params)
        images: list[Image.Image] = []
        videos: list[VideoClip] = []
        for start in range(0, params.num_images, chunk):
            seeds = params.seeds[start:start + chunk]
            part = replace(spec, params=replace(params, num_images=len(seeds), seeds=seeds))
            result = fam.render(part, on_step)
            images += result.images
            videos += result.videos
        return Rendered(images=images, videos=videos, load_s=load_s, pipeline_s=time.perf_counter() - started)

    def images_per_call(self, weights: str, params: RenderParams) -> int:
        """How many of the request's outputs one pipeline call may make: all when they fit the budget beside
        the loaded weights, otherwise the most that do (at least one)."""
        if self.budget is None or params.num_images == 1:
            return params.num_images
        fam_class = family_class(self.located[weights].entry.family)
        room = self.budget - sum(r.bytes for r in self._residents())
        for n in range(params.num_images, 1, -1):
            if fam_class.activation_bytes(replace(params, num_images=n), 1) <= room:
                return n
        return 1

    def release_memory(self) -> None:
        """After an aborted job or an eviction: collect dropped objects and return cached device memory."""
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
