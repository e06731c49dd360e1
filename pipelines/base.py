"""The contract every model family implements (the plain data it consumes is in render_types.py).

Families know nothing of HTTP or jobs: the engine hands them `RenderSpec`s
(decoded PIL images and numbers) and gets PIL images back. One family instance
is owned by exactly one worker thread, so its diffusers pipelines are never
called from two threads.

torch and diffusers are imported only inside `load`/`run`: the static facts
(tasks, size grid, checks, batch key, memory estimate) serve the HTTP side,
which must start without them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from pipelines.acceleration import Applied, LoadProfile, apply_load_profile, compile_counters
from pipelines.batching import BatchKey
from pipelines.render_types import (  # re-exported: families and the engine import them from here
    AdapterUse,
    ComponentInfo,
    ParamError,
    RenderCancelled,
    RenderParams,
    RenderResult,
    RenderSpec,
    Task,
    VideoClip,
    dtype_bytes,
)
from pipelines.step_cache import StepCache, step_cache_call

if TYPE_CHECKING:
    import torch

    from pipelines.lora_runtime import LoadedAdapter
    from pipelines.memory import MemoryCoefficients
    from pipelines.previews import LatentProjection, PreviewTap
    from pipelines.quantize import VariantChoice

__all__ = ["AdapterUse", "ComponentInfo", "Family", "ParamError", "RenderCancelled", "RenderParams", "RenderResult",
           "RenderSpec", "StepCallback", "Task", "VideoClip", "dtype_bytes", "fit_within"]

log = logging.getLogger("darkroom.pipelines")

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, steps total)."""


class Family(ABC):
    """A model family: how to load its weights and turn RenderSpecs into images."""

    name: ClassVar[str]
    tiny_builder: ClassVar[str]
    """"module:function" that builds this family's tiny random-weight pipeline with its real classes (demo
    weights and tests); imported only when a build is asked for, since diffusers is slow to import."""
    pipeline_class: ClassVar[str]
    """The diffusers class the weights are loaded with (recorded on jobs, checked by tests)."""
    size_multiple: ClassVar[int]
    """Output width and height must be multiples of this."""
    tasks: ClassVar[frozenset[Task]]
    supports_negative_prompt: ClassVar[bool] = False
    img2img_strength: ClassVar[bool] = False
    """Whether plain edits (not only masked ones) honour `strength`."""
    native_max_long_side: ClassVar[int] = 1024
    """Largest long side rendered in one pass; larger outputs go through the tiled refine-upscale."""
    refine_tile: ClassVar[int] = 1024
    refine_overlap: ClassVar[int] = 128
    refine_strength: ClassVar[float] = 0.3
    merge_tasks: ClassVar[frozenset[Task]] = frozenset({Task.GENERATE})
    """Tasks whose renders from different requests can share one pipeline call (prompts and seeds per image)."""
    denoisers: ClassVar[tuple[str, ...]] = ("transformer",)
    """The main pipeline's denoiser modules (what compile, fp8, attention backends and the step cache act on)."""
    attention_dispatch: ClassVar[bool] = True
    """Whether the denoiser's attention goes through diffusers' attention dispatcher (backend choice)."""
    step_cache: ClassVar[bool] = True
    """Whether the denoiser takes diffusers' step-cache hooks (CacheMixin transformers do; SDXL's UNet does not)."""
    sets_cache_context: ClassVar[bool] = True
    """Whether the family's pipelines set diffusers' cache context around denoiser calls themselves."""
    takes_loras: ClassVar[bool] = False
    """Whether requests may bring LoRA adapters (the family's diffusers pipeline has a LoRA loader whose
    conversions darkroom uses, and its denoiser's linear layers take per-image updates)."""
    lora_layouts: ClassVar[frozenset[str]] = frozenset()
    """Community key layouts (pipelines/lora_format.py) the family's diffusers loader converts, beside diffusers'
    own and kohya's with diffusers module names."""
    unsupported_variants_why: ClassVar[str] = "this family's loader does not read it"
    """Why a weight variant outside `supported_variants` is passed over (recorded on jobs)."""
    addons_block_variants: ClassVar[bool] = False
    """Whether the weights entry's add-ons (pulled beside it) keep the family at bf16."""

    def __init__(self, model_dir: Path, device: str, dtype: torch.dtype, profile: LoadProfile | None = None) -> None:
        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        self.profile = profile or LoadProfile()
        self.applied: Applied | None = None
        """What the load profile turned into on this device (set by `load`)."""
        self.pipelines: dict[str, Any] = {}
        """Loaded diffusers pipelines by role; `load` fills it, sharing modules between roles."""
        self.variant_choice: VariantChoice | None = None
        """The weight variant the load ran at (pipelines/quantize.py); set by `load`."""
        self.preview_tap: PreviewTap | None = None
        """Where this call's live previews go (set by the worker around a render that asked for them)."""
        self._preview_params: RenderParams | None = None
        self._projection: LatentProjection | None = None
        self.preview_off: str | None = None
        """Why this loaded model makes no more previews (one failed); None while it does."""

    def pipeline(self, role: str) -> Any:
        """The loaded pipeline for `role` (e.g. 'edit', 'inpaint'); RuntimeError before `load`."""
        try:
            return self.pipelines[role]
        except KeyError:
            raise RuntimeError(f"{self.name}: no loaded {role!r} pipeline (call load first)") from None

    # ---- static facts, usable before loading -------------------------------------------
    def components(self, variant: str = "bf16") -> list[ComponentInfo]:
        """Components named in model_index.json with their bytes at the serving dtype under weight `variant`
        (file headers only: safetensors, and a from-files variant's own files where they are here)."""
        from pipelines.variants import VARIANTS
        from weights.locate import variant_files
        from weights.variant_bytes import folder_bytes_under, gguf_bytes

        v = VARIANTS[variant]
        files = variant_files(self.model_dir, variant) if v.from_files else {}
        index = json.loads((self.model_dir / "model_index.json").read_text())
        out = []
        for name, spec in sorted(index.items()):
            if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
                continue
            kind = self.component_kind(name)
            folder = self.model_dir / name
            if name in files and files[name].suffix == ".gguf":
                size = gguf_bytes(files[name], dtype_bytes(self.dtype))
            elif folder.is_dir():
                size = folder_bytes_under(folder, v.bits_for(kind), dtype_bytes(self.dtype))
            else:
                size = 0
            out.append(ComponentInfo(name=name, class_name=spec[1], bytes=size, kind=kind))
        return out

    @classmethod
    def component_kind(cls, name: str) -> str:
        """denoiser, encoder (text encoders) or other (VAE, image encoder, vocoder...)."""
        if name in cls.denoisers:
            return "denoiser"
        return "encoder" if name.startswith("text_encoder") else "other"

    @classmethod
    def check(cls, params: RenderParams) -> None:
        """Raise ParamError for params this family can never run. Called before a job is accepted."""
        if params.task not in cls.tasks:
            raise ParamError("task", f"{cls.name} cannot do {params.task}")
        if params.width % cls.size_multiple or params.height % cls.size_multiple:
            raise ParamError("aspect_ratio", f"{cls.name} needs sizes in multiples of {cls.size_multiple}")
        if params.num_inference_steps < 1:
            raise ParamError("num_inference_steps", "num_inference_steps must be at least 1")
        if params.task is Task.INPAINT and not 0.0 < params.strength <= 1.0:
            raise ParamError("strength", "strength must be in (0, 1] for masked edits")
        if params.negative_prompt and not cls.supports_negative_prompt:
            raise ParamError("negative_prompt", f"{cls.name} is guidance-distilled and has no negative prompt; "
                             "remove negative_prompt", unsupported=True)

    cfg_style: ClassVar[str] = "pairs"
    """How the family's pipeline runs true classifier-free guidance: "pairs" (two denoiser calls per step,
    conditional then unconditional, combined after the second) or "batch" (one call on a doubled batch). CFG
    parallel (pipelines/parallel.py) splits either between two ranks."""

    @classmethod
    def true_cfg(cls, params: RenderParams) -> bool:
        """Whether a render of `params` runs true classifier-free guidance (two denoiser passes per step)."""
        return False

    @classmethod
    def denoising_steps(cls, params: RenderParams) -> int:
        """The denoising steps a render of `params` runs: all of them, or int(steps x strength) for the edits that
        start from a partly noised source (inpainting, and plain edits where the family honours strength)."""
        partial = params.task is Task.INPAINT or (params.task is Task.EDIT and cls.img2img_strength)
        return max(1, int(params.num_inference_steps * params.strength)) if partial else params.num_inference_steps

    @classmethod
    def edit_controls(cls) -> list[str]:
        """Request fields this family honours beyond prompt and images (listed per model for clients)."""
        controls = ["num_inference_steps", "guidance_scale", "seed"]
        if Task.INPAINT in cls.tasks or cls.img2img_strength:
            controls.append("strength")
        if cls.supports_negative_prompt:
            controls.append("negative_prompt")
        if Task.INPAINT in cls.tasks:
            controls.append("mask_url")
        return controls

    @classmethod
    def batch_key(cls, params: RenderParams) -> BatchKey:
        """What must match for two renders to share a batch (prompt, seed and source pixels may differ).
        `shared_call` says whether such renders share one pipeline call or only run one after another."""
        return BatchKey(family=cls.name, shared_call=cls.can_merge(params), task=str(params.task),
                        width=params.width, height=params.height, steps=params.num_inference_steps,
                        guidance=params.guidance_scale, strength=params.strength, sources=params.num_sources,
                        references=params.num_references, negative_prompt=params.negative_prompt is not None,
                        preset=params.preset, frames=params.num_frames, fps=params.fps,
                        audio=params.generate_audio)

    @classmethod
    def can_merge(cls, params: RenderParams) -> bool:
        """Whether this render may share a pipeline call with others of the same batch key."""
        return params.task in cls.merge_tasks and max(params.width, params.height) <= cls.native_max_long_side

    @classmethod
    @abstractmethod
    def activation_bytes(cls, params: RenderParams, batch: int, coeffs: MemoryCoefficients) -> int:
        """Conservative peak activation memory for `batch` renders like `params` (excludes weights), with the
        family's `coeffs` (the config dir's memory.toml; calibration evaluates the formula's terms with its own)."""

    # ---- runtime, owned by one worker thread ---------------------------------------------
    @abstractmethod
    def load(self) -> None:
        """Load the weights (safetensors only) onto `self.device`."""

    def _from_pretrained(self) -> Any:
        """The family's main pipeline (`pipeline_class`) from its folder at the profile's weight variant (the
        first in its order that loads here): safetensors and GGUF only, no hub, on device."""
        import diffusers

        from pipelines.quantize import choose_variant, load_arguments

        choice = choose_variant(self.profile.variants, self.profile.variant_pinned, self.device, self.model_dir,
                                self.supported_variants(), self.unsupported_variants_why)
        for why in choice.passed_over:
            log.warning("%s: %s", self.model_dir.name, why)
        extra = load_arguments(choice, self.model_dir, self.denoisers, self.dtype)
        self.variant_choice = choice
        pipe = getattr(diffusers, self.pipeline_class).from_pretrained(
            self.model_dir, dtype=self.dtype, use_safetensors=True, local_files_only=True, **extra
        )
        return pipe.to(self.device)

    def sibling(self, pipeline_class: type, pipe: Any) -> Any:
        """`pipeline_class.from_pipe(pipe)`: another task's pipeline sharing every module of `pipe` (no second
        copy of the weights). from_pipe ends by casting the new pipeline to a dtype, which diffusers refuses for
        quantized modules; they are loaded at the serving dtype already, so that cast is skipped for them."""
        if self.variant_choice is None or self.variant_choice.variant.name == "bf16":
            return pipeline_class.from_pipe(pipe)

        class _SharedAsLoaded(pipeline_class):  # type: ignore[misc, valid-type]
            def to(self, *args: Any, **kwargs: Any) -> Any:
                if not args and set(kwargs) == {"dtype"}:
                    return self
                return super().to(*args, **kwargs)

        shared = _SharedAsLoaded.from_pipe(pipe)
        shared.__class__ = pipeline_class
        return shared

    def supported_variants(self) -> frozenset[str]:
        """The weight variants this family's loader reads (Nunchaku's only for the denoisers it publishes)."""
        from pipelines.quantize import supported_variants

        index = json.loads((self.model_dir / "model_index.json").read_text())
        return supported_variants(tuple(index[d][1] for d in self.denoisers if isinstance(index.get(d), list)))

    def move_to(self, device: str) -> None:
        """Move every role's modules (shared between roles, so each moves once) to `device`."""
        import torch

        seen: set[int] = set()
        target = torch.device(device)
        for pipe in self.pipelines.values():
            for module in pipe.components.values():
                if not isinstance(module, torch.nn.Module) or id(module) in seen:
                    continue
                seen.add(id(module))
                first = next(module.parameters(), None)
                if first is not None and first.device != target:
                    module.to(target)
        self.device = device

    def pin_host_memory(self) -> None:
        """Page-lock the weights held in host RAM so they copy back to the GPU at full PCIe speed (CUDA only)."""
        import torch

        if not torch.cuda.is_available():
            return
        for pipe in self.pipelines.values():
            for module in pipe.components.values():
                for tensor in [*getattr(module, "parameters", list)(), *getattr(module, "buffers", list)()]:
                    if tensor.device.type == "cpu" and not tensor.is_pinned():
                        tensor.data = tensor.data.pin_memory()

    def enable_offload(self, placement: str, device: str) -> None:
        """Run from host RAM with diffusers' hooks: 'model_cpu_offload' (one component on `device` at a time)
        or 'group_offload' (blocks streamed through `device`, prefetched on a side CUDA stream)."""
        import torch

        for pipe in self.pipelines.values():
            if placement == "model_cpu_offload":
                pipe.enable_model_cpu_offload(device=device)
            elif placement == "group_offload":
                pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1,
                                          use_stream=device.startswith("cuda"))
                break  # hooks sit on the shared modules: once covers every role
            else:
                raise ValueError(f"unknown placement {placement!r}")
        self.device = device

    def _use(self, pipelines: dict[str, Any]) -> None:
        """Keep the loaded pipelines by role (progress bars off: they are for notebooks, not server logs) and
        apply the load profile to their shared denoisers; compiled families warm up at the profile's sizes."""
        for pipe in pipelines.values():
            pipe.set_progress_bar_config(disable=True)
            vae = getattr(pipe, "vae", None)
            if vae is not None and hasattr(vae, "enable_slicing"):
                # The memory rule (`activation_bytes`) counts one image's VAE peak whatever the batch, so a shared
                # call encodes and decodes one image at a time: its VAE peak stays one image's (a batch of eight
                # 1024-px Kontext decodes would otherwise need ~14 GiB more than admitted), each image is decoded
                # exactly as its solo render is, and on a CPU it is faster per image (activations stay in cache).
                vae.enable_slicing()
        self.pipelines = pipelines
        self.applied = apply_load_profile(self.profile, pipelines, self.denoisers, self.device, self.dtype,
                                          self.attention_dispatch, self.no_fusing(), self.takes_loras)
        if self.variant_choice is not None:
            from pipelines.quantize import parameter_bytes

            main = next(iter(pipelines.values()))
            modules = {id(m): m for m in main.components.values() if hasattr(m, "parameters")}
            self.applied.quantization = self.variant_choice.record(sum(parameter_bytes(m) for m in modules.values()))
            if self.variant_choice.variant.name != "bf16":
                self.applied.weights_dtype = f"{self.variant_choice.variant.name} ({self.variant_choice.variant.summary})"
                if self.variant_choice.variant.name == "fp8_dynamic":
                    self.applied.activations_dtype = "float8_e4m3fn (dynamic, per-row scales)"
        if self.applied.compile["active"] and self.profile.warmup:
            self.warm_up(self.profile.warmup)

    def no_fusing(self) -> str | None:
        """Why the loaded attention processors cannot take fused QKV projections (None: they can)."""
        return None

    def denoiser_modules(self) -> list[Any]:
        """The loaded denoiser modules (shared by every role)."""
        main = next(iter(self.pipelines.values()))
        return [m for name in self.denoisers if (m := getattr(main, name, None)) is not None]

    def warm_up(self, sizes: tuple[tuple[int, int, int], ...]) -> None:
        """Render the family's main task once per size (two steps) so compilation happens at load, not in a
        request; logs how many graphs came from the persisted compile cache."""
        started = time.perf_counter()
        task = Task.EDIT if Task.EDIT in self.tasks else next(iter(sorted(self.tasks)))
        from pipelines.lora_slots import all_slots_active

        plans = list(self.applied.slot_plans.values()) if self.applied else []
        for width, height, frames in sizes:
            params = self.warmup_params(task, width, height, frames)
            spec = RenderSpec(params, sources=(Image.new("RGB", (width, height), (128, 128, 128)),)
                              * params.num_sources)
            self.render(spec, lambda _k, _n: None)
            if plans:  # the adapted variant of the compiled blocks (LoRA slots on, adding zero) compiles now too
                with ExitStack() as stack:
                    for plan in plans:
                        stack.enter_context(all_slots_active(plan))
                    self.render(spec, lambda _k, _n: None)
        counts = compile_counters()
        self.applied.compile |= {"warmup_s": round(time.perf_counter() - started, 2), **counts}  # type: ignore[union-attr]
        log.info("%s warmed up at %s in %.1f s (%d compiled graphs from the cache, %d compiled now)", self.name,
                 sizes, time.perf_counter() - started, counts["fxgraph_cache_hit"], counts["fxgraph_cache_miss"])

    def warmup_params(self, task: Task, width: int, height: int, frames: int = 0) -> RenderParams:
        """The render a warm-up runs at one size (and clip length, for video)."""
        return RenderParams(task=task, prompt="warm-up", width=width, height=height, num_images=1, seeds=(0,),
                            num_inference_steps=2, guidance_scale=1.0, strength=1.0,
                            num_sources=0 if task is Task.GENERATE else 1, num_frames=frames,
                            fps=24.0 if frames else 0.0)

    def cache_for(self, params: RenderParams) -> tuple[StepCache, str | None]:
        """The step cache a call runs with, and why it differs from the preset when it does."""
        cache = StepCache.decode(params.preset)
        if cache.kind != "none" and not self.step_cache:
            return StepCache(), f"{self.name} has no step-cache hooks"
        return cache, None

    @abstractmethod
    def run(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        """Render one spec in one pass. Deterministic for a given spec, device and dtype."""

    @classmethod
    def supports_refine(cls) -> bool:
        """Whether this family can go past its native size (it implements `refine`)."""
        return cls.refine is not Family.refine

    def refine(self, tile: Image.Image, prompt: str, seed: int, steps: int, strength: float) -> Image.Image:
        """img2img one tile at low strength (same size out). Families that can refine override this."""
        raise NotImplementedError(f"{self.name} has no img2img refine pass")

    def refine_steps(self, steps: int) -> int:
        """Steps for a refine pass: enough that int(steps * strength) denoises at least twice."""
        return max(steps, math.ceil(2 / self.refine_strength))

    def render(self, spec: RenderSpec, on_step: StepCallback,
               adapters: Mapping[str, LoadedAdapter] | None = None) -> RenderResult:
        """Render at any size: natively up to `native_max_long_side`, above it natively at that size and
        then upscaled with a tiled img2img refine (pipelines/tiling.py). Progress counts both passes.
        `adapters` are the converted LoRAs the params name (by content hash), applied per image for this call."""
        cache, why = self.cache_for(spec.params)
        schedulers = [s for pipe in self.pipelines.values() if (s := getattr(pipe, "scheduler", None)) is not None]
        with self._adapted(spec.params, adapters or {}) as lora, \
                step_cache_call(self.denoiser_modules(), cache, not self.sets_cache_context, schedulers) as counter:
            result = self._render_sized(spec, on_step)
        result.stats = {"denoiser_passes": counter.passes, "step_cache": cache.encode() or None}
        if why:
            result.stats["step_cache_off"] = why
        if lora is not None and lora.adapters:
            compiled = bool(self.applied and self.applied.compile.get("active"))
            result.stats["loras"] = {"adapters": lora.adapters, "layers": lora.layers, "slotted": lora.slotted,
                                     "compiled": compiled and lora.uncompiled is None,
                                     **({"uncompiled": lora.uncompiled} if lora.uncompiled else {})}
        return result

    @contextmanager
    def _adapted(self, params: RenderParams, adapters: Mapping[str, LoadedAdapter]) -> Iterator[Any]:
        """The call's LoRAs applied to the denoisers (none: nothing changes). On a compiled denoiser they go into
        its LoRA slots (pipelines/lora_slots.py: no recompile); a call the slots cannot hold runs eagerly
        (recorded), with the compiled graphs kept for the next."""
        per_image = params.adapters_per_image()
        if not any(per_image):
            yield None
            return
        import torch

        from pipelines.lora_runtime import adapters_applied
        from pipelines.lora_slots import slots_filled, why_not_slotted

        main = next(iter(self.pipelines.values()))
        denoisers = {name: m for name in self.denoisers if (m := getattr(main, name, None)) is not None}
        applied = self.applied
        if applied is None or not applied.compile.get("active"):
            with adapters_applied(denoisers, per_image, adapters, self.device, self.dtype) as done:
                yield done
            return
        fused = bool(applied.fused_qkv.get("active"))
        plans = list(applied.slot_plans.values())
        reason = None if plans else "this model has no compiled LoRA slots (lora_slots = 0)"
        for plan in plans:
            reason = reason or why_not_slotted(plan, per_image, adapters, fused)
        if reason is not None:
            with torch.compiler.set_stance("force_eager"), \
                    adapters_applied(denoisers, per_image, adapters, self.device, self.dtype) as done:
                done.uncompiled = reason
                yield done
            return
        with ExitStack() as stack:
            placed: set[str] = set()
            for plan in plans:
                placed |= stack.enter_context(slots_filled(plan, per_image, adapters, fused))
            # Layers outside the compiled blocks (embedders, final projections) are wrapped per call as on an eager
            # model: no compiled graph traced them.
            rest = {sha: replace(a, layers={p: d for p, d in a.layers.items() if p not in placed})
                    for sha, a in adapters.items()}
            done = stack.enter_context(adapters_applied(denoisers, per_image, rest, self.device, self.dtype))
            done.slotted = len(placed)
            yield done

    def _render_sized(self, spec: RenderSpec, on_step: StepCallback) -> RenderResult:
        p = spec.params
        if max(p.width, p.height) <= self.native_max_long_side or not self.images_only(p):
            with self._previewing(p):
                return self.run(spec, on_step)
        from pipelines.tiling import refine_tiled, tile_boxes

        scale = self.native_max_long_side / max(p.width, p.height)
        m = self.size_multiple
        native = replace(p, width=max(m, round(p.width * scale / m) * m), height=max(m, round(p.height * scale / m) * m))
        n_tiles = len(tile_boxes(p.width, p.height, self.refine_tile, self.refine_overlap))
        steps = self.refine_steps(p.num_inference_steps)
        total = p.num_inference_steps + p.num_images * n_tiles
        with self._previewing(native):  # the base pass previews; the refine tiles do not
            base = self.run(replace(spec, params=native), lambda k, _n: on_step(k, total))
        done = [p.num_inference_steps]

        def refine_one(tile: Image.Image, index: int, seed: int) -> Image.Image:
            out = self.refine(tile, p.prompt, seed * 1009 + index, steps, self.refine_strength)
            done[0] += 1
            on_step(done[0], total)
            return out

        images = [refine_tiled(img, (p.width, p.height), self.refine_tile, self.refine_overlap,
                               lambda tile, i, s=seed: refine_one(tile, i, s))
                  for img, seed in zip(base.images, p.seeds, strict=True)]
        return RenderResult(images=images)

    @staticmethod
    def images_only(params: RenderParams) -> bool:
        """Refine-upscaling applies to still images, not clips."""
        return params.num_frames == 0

    @staticmethod
    def generators(seeds: Sequence[int]) -> list[torch.Generator]:
        """One CPU generator per image: CPU noise is identical on every device, so seeds travel."""
        import torch

        return [torch.Generator("cpu").manual_seed(s) for s in seeds]

    def step_callback(self, on_step: StepCallback, total: int) -> Callable[..., dict[str, object]]:
        """Adapt our progress callback to diffusers' callback_on_step_end (and make the call's live previews)."""
        tap, params = self.preview_tap, self._preview_params

        def _cb(pipe: object, step: int, _t: object, kwargs: dict[str, object]) -> dict[str, object]:
            on_step(step + 1, total)
            if tap is not None and params is not None and self.preview_off is None and tap.wants(step + 1, total):
                self._preview(pipe, kwargs.get("latents"), params, tap, step + 1, total)
            return {}

        return _cb

    # ---- live previews -----------------------------------------------------------------------------------
    @classmethod
    def makes_previews(cls) -> bool:
        """Whether this family can show its denoising state (it implements `preview_latents`)."""
        return cls.preview_latents is not Family.preview_latents

    def preview_latents(self, pipe: Any, latents: torch.Tensor, params: RenderParams) -> torch.Tensor | None:
        """The denoising state `latents`, as the pipeline's step callback sees them (packed, normalised), as raw
        VAE latents (B, C, h, w) -- for a clip, its middle latent frame; None: no preview of this state."""
        return None

    @contextmanager
    def _previewing(self, params: RenderParams) -> Iterator[None]:
        self._preview_params = params
        try:
            yield
        finally:
            self._preview_params = None

    def projection(self, pipe: Any) -> LatentProjection:
        """The latent -> RGB projection of this model's VAE, fitted on first use and kept while it is loaded."""
        if self._projection is None:
            from pipelines.previews import fit_projection

            self._projection = fit_projection(pipe.vae)
            log.info("%s: preview projection fitted in %.2f s (R^2 %.3f on its fitting set)", self.name,
                     self._projection.fit_s, self._projection.r2)
        return self._projection

    def _preview(self, pipe: Any, latents: object, params: RenderParams, tap: PreviewTap, step: int,
                 total: int) -> None:
        import torch

        if not isinstance(latents, torch.Tensor):
            return
        try:
            raw = self.preview_latents(pipe, latents, params)
            if raw is not None:
                tap.offer(step, total, self.projection(pipe).frames(raw))
        except ValueError:  # a latent layout this family cannot read (an unusual size): no preview of this call
            log.debug("%s: no preview at step %d of this render", self.name, step, exc_info=True)
        except Exception:  # a preview never fails a render: this model makes none from now on
            log.exception("%s: previews turned off after a failure", self.name)
            self.preview_off = "failed (see the server log)"


def fit_within(image: Image.Image, max_area: int, multiple: int) -> Image.Image:
    """Resize to at most `max_area` pixels keeping the aspect ratio, sides rounded down to `multiple`."""
    w, h = image.size
    scale = min(1.0, (max_area / (w * h)) ** 0.5)
    nw = max(multiple, int(w * scale) // multiple * multiple)
    nh = max(multiple, int(h * scale) // multiple * multiple)
    return image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.Resampling.LANCZOS)
