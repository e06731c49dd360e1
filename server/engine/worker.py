"""The in-process worker: one device in this process, the families loaded on it, and the only caller of their
diffusers pipelines (the engine gives each worker one thread)."""

from __future__ import annotations

import gc
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from importlib.metadata import version
from typing import Any

import torch
from PIL import Image

from pipelines.acceleration import AccelerationRefused, LoadProfile
from pipelines.base import Family, ParamError, RenderCancelled, RenderParams, RenderSpec, VideoClip
from pipelines.lora_format import LoraFormatError
from pipelines.lora_runtime import AdapterCache, LoadedAdapter, load_adapter
from pipelines.memory import MemoryCoefficients
from pipelines.previews import PreviewTap
from pipelines.registry import family_class
from server.engine import policy
from server.engine.policy import (
    EVICTION_ORDERS,
    DeviceState,
    ModelFootprint,
    NeverFits,
    Placement,
    ResidencyPlan,
    Resident,
    Transfer,
    plan_residency,
)
from server.engine.variant_plan import CardProfile
from server.engine.work import Cancelled, Completed, DeviceFault, Failed, Outcome, OutOfMemory, RenderWork
from server.engine.worker_handle import PreviewReport, StepReport, WorkerHandle
from weights.locate import LocatedWeights

log = logging.getLogger("darkroom.worker")

# Loads from disk run one at a time in the process: diffusers/transformers build models under accelerate's
# init_empty_weights, which patches torch.nn.Module for the whole process while it runs, so two workers loading
# at once (several GPUs warming up) corrupt each other's models ("Cannot copy out of meta tensor").
_LOAD_LOCK = threading.Lock()
_VERSIONED = ("torch", "diffusers", "transformers")


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


_FAULT_MARKERS = ("cuda error", "illegal memory access", "device-side assert", "unspecified launch failure",
                  "cublas_status_execution_failed", "ecc error")


def is_device_fault(exc: BaseException) -> bool:
    """Whether `exc` poisons the device (the CUDA context is unusable), as opposed to failing one job."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _FAULT_MARKERS)


def device_budget(device: str, reserve_bytes: int, limit_bytes: int | None = None) -> int | None:
    """Bytes models and activations may use on `device`: total memory less a reserve, capped by `limit_bytes`
    (None on CPU unless a limit is set)."""
    if not device.startswith("cuda"):
        return limit_bytes
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory - reserve_bytes
    return total if limit_bytes is None else min(total, limit_bytes)


def device_facts(device: str) -> tuple[str | None, float | None, tuple[int, int] | None]:
    """(name, memory in GB, compute capability) of `device`; (None, None, None) for a CPU."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None, None, None
    props = torch.cuda.get_device_properties(torch.device(device))
    return props.name, props.total_memory / 1e9, (props.major, props.minor)


def _image(data: bytes, mode: str) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert(mode)


def render_spec(work: RenderWork) -> RenderSpec:
    """The family-facing spec of `work`: its encoded inputs decoded."""
    params = work.params
    masks = tuple(_image(b, "L") for b in work.masks)
    return RenderSpec(params=params, sources=tuple(_image(b, "RGB") for b in work.sources),
                      references=tuple(_image(b, "RGB") for b in work.references),
                      mask=None if params.prompts or not masks else masks[0], masks=masks if params.prompts else ())


class Worker(WorkerHandle):
    """A device, the families on it (or parked in its host-RAM tier), and the thread that alone calls them.

    What moves where is decided by server/engine/policy.py (`plan_residency`): the
    worker only carries out the moves and keeps the bookkeeping the policy reads.
    """

    def __init__(self, name: str, device: str, dtype: torch.dtype, located: dict[str, LocatedWeights],
                 memory: Mapping[str, MemoryCoefficients], budget: int | None = None, ram_budget: int = 0,
                 order: str = "cost_aware", transfer: Transfer | None = None,
                 profiles: Mapping[str, LoadProfile] | None = None, lora_cache_bytes: int = 4_000_000_000) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.located = located
        self.budget = budget
        self.ram_budget = ram_budget
        self.order = EVICTION_ORDERS[order]
        self.transfer = transfer or Transfer()
        self.memory = memory
        self.profiles = profiles or {}
        """Acceleration to apply when each weights entry loads (configs/acceleration.toml)."""
        # Insertion order is recency: a family moves to the end each time it is used.
        self._families: OrderedDict[str, Family] = OrderedDict()
        self._ram: OrderedDict[str, Family] = OrderedDict()
        self._placement: dict[str, Placement] = {}
        self._last_used: dict[str, float] = {}
        self._footprints: dict[str, ModelFootprint] = {}
        self._versions = {pkg: version(pkg) for pkg in _VERSIONED}
        self.moves = 0
        self.evictions = 0
        self.bytes_moved = 0
        # Guards the bookkeeping below against readers on other threads (/api/v1/engine, /metrics).
        self._book = threading.Lock()
        self.adapter_cache = AdapterCache(lora_cache_bytes)
        """Converted LoRA adapters in host RAM by content hash (pipelines/lora_runtime.py)."""
        self.card: CardProfile | None = None
        """The card profile the variant planner judged this device as (server/engine/variant_plan.py)."""
        self.variant_plans: list[dict[str, Any]] = []
        """Per served id: the variant, placement and estimated seconds planned here (/api/v1/engine)."""

    def loaded(self) -> frozenset[str]:
        """Weights names currently on this worker's device (resident or running offloaded)."""
        with self._book:
            return frozenset(self._families)

    def in_ram(self) -> frozenset[str]:
        """Weights names parked in this worker's host-RAM tier."""
        with self._book:
            return frozenset(self._ram)

    def placement(self, weights: str) -> Placement | None:
        """How a loaded model sits (resident or offloaded); None when not loaded."""
        return self._placement.get(weights) if weights in self._families else None

    def _new_family(self, weights: str, device: str | None = None) -> Family:
        where = self.located[weights]
        return family_class(where.entry.family)(where.path, device or self.device, self.dtype,
                                                self.profiles.get(weights))

    def footprint(self, weights: str) -> ModelFootprint:
        """Component bytes of `weights` at this worker's dtype, from the safetensors headers (cached)."""
        if weights not in self._footprints:
            try:
                comps = tuple(c.bytes for c in self._new_family(weights).components(self.variant_of(weights))
                              if c.bytes)
            except Exception:  # any unreadable header (safetensors, GGUF, a lock file) sizes it unknown
                # Unreadable headers: the size is unknown (counted as 0); loading the model then fails with
                # the real error and its jobs fail cleanly instead of the scheduler dying here.
                log.exception("could not read the weight sizes of %s", weights)
                comps = ()
            self._footprints[weights] = ModelFootprint(weights, comps)
        return self._footprints[weights]

    def variant_of(self, weights: str) -> str:
        """The weight variant `weights` runs at here: what it loaded at, else the first its profile plans."""
        fam = self._families.get(weights) or self._ram.get(weights)
        if fam is not None and fam.variant_choice is not None:
            return fam.variant_choice.variant.name
        profile = self.profiles.get(weights)
        return profile.variants[0] if profile and profile.variants else "bf16"

    def weight_bytes(self, weights: str) -> int:
        """Bytes of `weights` at this worker's dtype."""
        return self.footprint(weights).bytes

    def state(self) -> DeviceState:
        with self._book:
            on_device = [(n, self._placement.get(n), self._last_used.get(n, 0.0)) for n in self._families]
            parked = list(self._ram)
        gpu = tuple(Resident(n, self.weight_bytes(n) + self._extra_bytes(n) if p is Placement.RESIDENT else 0, t)
                    for n, p, t in on_device)
        # Converted LoRA adapters share the host-RAM tier with parked models.
        ram_used = sum(self.weight_bytes(n) for n in parked) + self.adapter_cache.nbytes
        return DeviceState(self.name, self.budget, gpu, frozenset(parked), max(0, self.ram_budget - ram_used))

    def _extra_bytes(self, weights: str) -> int:
        """Device bytes a loaded family holds beside its weights (compiled LoRA slots)."""
        fam = self._families.get(weights)
        return fam.applied.extra_device_bytes if fam is not None and fam.applied is not None else 0

    def snapshot(self) -> dict[str, Any]:
        with self._book:
            on_device = [(n, self._placement.get(n), self._families[n].applied) for n in self._families]
            parked = list(self._ram)
        return {
            "name": self.name,
            "device": self.device,
            "device_name": (torch.cuda.get_device_name(torch.device(self.device))
                            if self.device.startswith("cuda") else "cpu"),
            "budget_bytes": self.budget,
            "card": self.card.label if self.card else None,
            "variant_plans": self.variant_plans,
            "resident": [{"weights": n, "bytes": self.weight_bytes(n), "placement": p.value if p else None,
                          "acceleration": applied.record() if applied else None}
                         for n, p, applied in on_device],
            "host_ram": [{"weights": n, "bytes": self.weight_bytes(n)} for n in parked],
            "loads": self.moves,
            "evictions": self.evictions,
            "bytes_moved": self.bytes_moved,
            "memory": ({"allocated": torch.cuda.memory_allocated(torch.device(self.device)),
                        "reserved": torch.cuda.memory_reserved(torch.device(self.device))}
                       if self.device.startswith("cuda") else None),
        }

    def preload(self, names: list[str]) -> None:
        for weights in names:
            room = self.budget is None or self.state().used + self.weight_bytes(weights) <= self.budget
            if room:
                self.family(weights)
            else:
                log.info("not preloading %s on %s: %.1f GB would exceed the %.1f GB budget; it loads on demand",
                         weights, self.device, self.weight_bytes(weights) / 1e9, (self.budget or 0) / 1e9)

    def plan(self, weights: str, activation_bytes: int, demand: Mapping[str, int] | None = None) -> ResidencyPlan:
        """What would have to move for `weights` to run with `activation_bytes` (NeverFits if it cannot)."""
        return plan_residency(self.state(), self.footprint(weights), activation_bytes, demand or {}, self.order,
                              self.transfer)

    def family(self, weights: str, activation_bytes: int = 0, force: Placement | None = None,
               demand: Mapping[str, int] | None = None) -> tuple[Family, float]:
        """The family for `weights`, after making room and loading it as the policy says, and the load seconds.

        `force` asks for an offload placement even when the policy would keep it resident (the OOM retry).
        """
        plan = self.plan(weights, activation_bytes, demand)
        placement = plan.placement if force is None else force
        for move in plan.moves:
            if move.model == weights:
                continue
            if move.action == "offload_to_ram" and self.ram_budget > 0:
                self._park(move.model)
            else:
                self.evict(move.model)
        started = time.perf_counter()
        fam = self._families.get(weights)
        if fam is not None and self._placement.get(weights) is not placement:
            self.evict(weights)  # re-placed (e.g. resident -> offload after an OOM): rebuild its hooks
            fam = None
        if fam is None:
            fam = self._bring(weights, placement)
        with self._book:
            self._families.move_to_end(weights)
            self._last_used[weights] = time.monotonic()
        return fam, time.perf_counter() - started if plan.moves or force else 0.0

    def _bring(self, weights: str, placement: Placement) -> Family:
        where = self.located[weights]
        _quiet_load_progress()
        started = time.perf_counter()
        with self._book:
            fam = self._ram.pop(weights, None)
        source = "host RAM" if fam is not None else "disk"
        if fam is None:
            # Offloaded models are built in host RAM and hooked to the device; residents load straight onto it.
            fam = self._new_family(weights, self.device if placement is Placement.RESIDENT else "cpu")
            with _LOAD_LOCK:
                fam.load()
            if fam.variant_choice is not None and fam.variant_choice.passed_over:
                # The planned variant could not load and another did: count that one's bytes from now on.
                self._footprints.pop(weights, None)
        if placement is Placement.RESIDENT:
            fam.move_to(self.device)
        else:
            fam.enable_offload(placement.value, self.device)
        with self._book:
            self._families[weights] = fam
            self._placement[weights] = placement
        self.moves += 1
        self.bytes_moved += self.weight_bytes(weights)
        log.info("loaded %s (%s weights, %s, from %s) on %s in %.2fs", weights, "demo" if where.demo else "real",
                 placement.value, source, self.device, time.perf_counter() - started)
        return fam

    def _park(self, weights: str) -> None:
        """Move a resident family to the host-RAM tier (pinned on CUDA) so it comes back at PCIe speed."""
        with self._book:
            fam = self._families.pop(weights, None)
            placement = self._placement.pop(weights, None)
        if fam is None:
            return
        if placement is not Placement.RESIDENT:
            # Offload hooks are tied to the device; such a family is rebuilt rather than parked.
            fam.pipelines.clear()
            self.release_memory()
            return
        fam.move_to("cpu")
        fam.pin_host_memory()
        with self._book:
            self._ram[weights] = fam
        self.moves += 1
        self.evictions += 1
        self.bytes_moved += self.weight_bytes(weights)
        log.info("parked %s in host RAM to make room on %s", weights, self.device)
        self.release_memory()

    def evict(self, weights: str) -> None:
        """Drop a family and every reference to its pipelines, then return the memory to the device."""
        with self._book:
            fam = self._families.pop(weights, None) or self._ram.pop(weights, None)
            self._placement.pop(weights, None)
        if fam is None:
            return
        fam.pipelines.clear()
        del fam
        self.evictions += 1
        log.info("evicted %s from %s to make room", weights, self.device)
        self.release_memory()

    # ---- rendering -----------------------------------------------------------------------------------------
    def render(self, work: RenderWork, on_step: StepReport, on_preview: PreviewReport | None = None) -> Outcome:
        """Run `work` and classify how it ended (the only place render exceptions are looked at)."""
        outcome: Outcome
        try:
            return self._render(work, on_step, on_preview)
        except RenderCancelled:
            outcome = Cancelled()
        except ParamError as exc:
            outcome = Failed(exc.message, {"code": "invalid_request", "message": exc.message, "field": exc.field})
        except AccelerationRefused as exc:
            outcome = Failed(str(exc), {"code": "unsupported_feature", "field": None, "message": (
                f"this server's profile requires an acceleration {self.device} cannot run: {exc}")})
        except NeverFits as exc:
            outcome = Failed(str(exc), {"code": "insufficient_vram", "field": None,
                                        "message": f"this job {exc}; lower the size or num_images"})
        except torch.OutOfMemoryError:
            outcome = OutOfMemory(f"{work.weights} ran out of memory on {self.device}")
        except Exception as exc:  # any pipeline fault fails this work only; details go to the log
            if is_device_fault(exc):
                return DeviceFault(f"{type(exc).__name__}: {exc}"[:500])
            log.exception("render of %s failed on %s", work.weights, self.device)
            outcome = Failed(f"{type(exc).__name__}: {exc}"[:500])
        # Outside the except blocks: the traceback (and the activations its frames hold) is gone by now.
        self.release_memory()
        return outcome

    def _render(self, work: RenderWork, on_step: StepReport, on_preview: PreviewReport | None) -> Completed:
        params = work.params
        fam_class = family_class(work.family)
        coeffs = self.memory[fam_class.name]
        fam, load_s = self.family(work.weights, fam_class.activation_bytes(params, 1, coeffs), work.force,
                                  work.demand)
        spec = render_spec(work)
        started = time.perf_counter()
        chunk = self.images_per_call(work.weights, params)
        images: list[Image.Image] = []
        videos: list[VideoClip] = []
        passes = 0
        stats: dict[str, Any] = {}
        adapters = self._adapters(work, fam_class)
        for start in range(0, params.num_images, chunk):
            with self._previews(fam, work, on_preview, start) as tap:
                result = fam.render(spec.images(start, start + chunk), on_step, adapters)
            images += result.images
            videos += result.videos
            passes += result.stats.get("denoiser_passes", 0)
            stats = result.stats
            if tap is not None:
                stats["previews"] = {"made": stats.get("previews", {}).get("made", 0) + tap.made}
        placement = self._placement.get(work.weights, Placement.RESIDENT).value
        where = self.located[work.weights]
        runtime: dict[str, Any] = {"worker": self.name, "device": self.device, "dtype": str(self.dtype).removeprefix("torch."),
                   "weights": work.weights, "demo_weights": where.demo, "family": work.family,
                   "placement": placement, "versions": self._versions, "variant": self.variant_of(work.weights),
                   "acceleration": fam.applied.record() if fam.applied else None,
                   "step_cache": stats.get("step_cache"), "denoiser_passes": passes,
                   "pipeline_calls": -(-params.num_images // chunk), "gpus": 1}
        if "step_cache_off" in stats:
            runtime["step_cache_off"] = stats["step_cache_off"]
        if "previews" in stats:
            runtime["previews"] = stats["previews"] | ({"off": fam.preview_off} if fam.preview_off else {})
        if "loras" in stats:
            runtime["loras"] = stats["loras"] | {"ignored": sorted({i for a in adapters.values() for i in a.ignored})}
        return Completed(images, videos, load_s, time.perf_counter() - started, runtime)

    @contextmanager
    def _previews(self, fam: Family, work: RenderWork, on_preview: PreviewReport | None,
                  first: int) -> Iterator[PreviewTap | None]:
        """A preview tap on `fam` for one pipeline call of `work` (images from `first` on), when asked for; waits
        for the last preview's delivery so none arrives after the outcome."""
        if work.previews is None or on_preview is None or not fam.makes_previews():
            yield None
            return
        report = on_preview

        def deliver(step: int, total: int, jpegs: tuple[bytes, ...]) -> None:
            report(step, total, (b"",) * first + jpegs)  # indexed by the work's image order

        tap = PreviewTap(work.previews, deliver)
        fam.preview_tap = tap
        try:
            yield tap
        finally:
            fam.preview_tap = None
            tap.close()

    def adapters_held(self) -> frozenset[str]:
        return frozenset(key.split(":", 1)[1] for key in self.adapter_cache.held())

    def _adapters(self, work: RenderWork, fam_class: type[Family]) -> dict[str, LoadedAdapter]:
        """The call's LoRAs converted for its family: from the cache, else from the files sent with the work."""
        wanted = frozenset(u.sha256 for uses in work.params.adapters_per_image() for u in uses)
        if not wanted:
            return {}
        if not fam_class.takes_loras:
            raise ParamError("loras", f"{fam_class.name} takes no LoRA adapters")
        out: dict[str, LoadedAdapter] = {}
        for sha in sorted(wanted):
            adapter = self.adapter_cache.get(sha, fam_class.name)
            if adapter is None:
                data = work.adapters.get(sha)
                if data is None:
                    raise RuntimeError(f"LoRA {sha[:12]} was neither held nor sent with the work")
                import diffusers

                try:
                    adapter = load_adapter(sha, data, getattr(diffusers, fam_class.pipeline_class),
                                           fam_class.denoisers)
                except LoraFormatError as exc:
                    raise ParamError("loras", exc.message) from None
                self.adapter_cache.put(fam_class.name, adapter, keep=wanted)
            out[sha] = adapter
        return out

    def images_per_call(self, weights: str, params: RenderParams) -> int:
        """How many of a request's images one pipeline call may make beside what is loaded now (the policy's
        answer, with this family's memory estimate)."""
        fam_class = family_class(self.located[weights].entry.family)
        coeffs = self.memory[fam_class.name]
        room = None if self.budget is None else self.budget - self.state().used
        return policy.images_per_call(
            room, lambda n: fam_class.activation_bytes(replace(params, num_images=n), 1, coeffs), params.num_images)

    def make_room(self, nbytes: int) -> None:
        """Park (or evict) models, least recently used first, until `nbytes` fit beside the rest."""
        if self.budget is None:
            return
        while self._families and self.state().used + nbytes > self.budget:
            with self._book:
                oldest = next(iter(self._families))
            if self.ram_budget > 0:
                self._park(oldest)
            else:
                self.evict(oldest)

    def memory_allocated(self) -> int:
        return torch.cuda.memory_allocated(torch.device(self.device)) if self.device.startswith("cuda") else 0

    def release_memory(self) -> None:
        """After an aborted job or an eviction: collect dropped objects and return cached device memory."""
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
