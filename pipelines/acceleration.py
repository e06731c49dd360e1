"""How a family's pipelines are made fast at load, and the record of what actually ran.

`apply_load_profile`: the attention backend through diffusers' attention dispatcher, fused QKV and channels-last
where they help, and regional `torch.compile` of the denoiser's repeated block. Weight variants (fp8, int8, nf4,
GGUF) are chosen and loaded by pipelines/quantize.py; the per-call step cache is pipelines/step_cache.py.

Every choice has an asked-for value and an active one; when they differ the reason is in the record (and logged
once), so a backend that is configured but missing is never a silent no-op and never a crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger("darkroom.acceleration")

ATTENTION_BACKENDS = ("native", "flash", "_flash_3", "sage", "xformers")
"""What a profile may ask for. diffusers' `*_hub` backends download kernels at run time: never (nothing phones home)."""
COMPILE_MODES = ("auto", "on", "off")
_FA3_CAPABILITY = (9, 0)
_LOGGED: set[str] = set()


class AccelerationRefused(RuntimeError):
    """A profile requires something this device cannot do (a pinned fp8 variant on a CPU or an Ampere GPU)."""


@dataclass(frozen=True)
class LoadProfile:
    """What to apply when a family's weights load (shared by every model id that runs those weights)."""

    attention: tuple[str, ...] = ("native",)
    """Backends in order of preference; the first this device can run wins, `native` (PyTorch SDPA) always can."""
    compile: str = "auto"
    """Regional torch.compile of the repeated block: auto = on CUDA devices only, on, off."""
    variants: tuple[str, ...] = ()
    """Weight variants to try at load, best first (server/engine/variant_plan.py orders them for the device);
    empty: bf16."""
    variant_pinned: bool = False
    """The operator pinned variants[0]: refuse to load without it rather than fall back."""
    fuse_qkv: bool = False
    channels_last: bool = False
    step_cache_hooks: bool = False
    """Some id running these weights has a cached preset: its calls install the cache's hooks, so when compiling,
    each block's forward is compiled on its own for the hooks to wrap."""
    warmup: tuple[tuple[int, int, int], ...] = ()
    """(width, height, frames) renders at load when compiling, so that no request pays for compilation."""
    lora_slots: int = 4
    """Adapters one call can carry on a compiled denoiser without recompiling (pipelines/lora_slots.py); 0: adapted
    calls on a compiled model run eagerly."""
    lora_max_rank: int = 64
    """The largest adapter rank the compiled slots hold; a larger adapter runs eagerly (recorded)."""


@dataclass
class Applied:
    """What a load profile turned into on one device: the asked-for and active choices with reasons."""

    attention: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    fused_qkv: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    weights_dtype: str = ""
    activations_dtype: str = ""
    slot_plans: dict[str, Any] = field(default_factory=dict)
    """Compiled LoRA slots per denoiser name (pipelines/lora_slots.SlotPlan); empty when not compiled."""

    def record(self) -> dict[str, Any]:
        """JSON for the job's runtime record."""
        return {"attention": self.attention, "compile": self.compile, "quantization": self.quantization,
                "fused_qkv": self.fused_qkv, "channels_last": self.channels_last,
                "weights_dtype": self.weights_dtype, "activations_dtype": self.activations_dtype,
                "lora_slots": {name: {"slots": p.slots, "max_rank": p.max_rank, "layers": len(p.layers),
                                      "bytes": p.nbytes} for name, p in self.slot_plans.items()} or None}

    @property
    def extra_device_bytes(self) -> int:
        """Device memory the profile added beside the weights (the LoRA slots' buffers)."""
        return sum(p.nbytes for p in self.slot_plans.values())


def _once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.warning(message)


def capability_of(device: str) -> tuple[int, int] | None:
    """The CUDA compute capability of `device`; None for a CPU (or no CUDA)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(torch.device(device))


def choose_attention(preference: tuple[str, ...], device: str, dispatches: bool) -> tuple[str, list[str]]:
    """The first backend in `preference` this device and family can run, and why each earlier one was passed
    over. `dispatches`: whether the family's attention goes through diffusers' dispatcher at all."""
    reasons: list[str] = []
    for backend in preference:
        if backend == "native":
            return "native", reasons
        if not dispatches:
            reasons.append(f"{backend}: this family's attention processors do not use diffusers' dispatcher")
            continue
        capability = capability_of(device)
        if capability is None:
            reasons.append(f"{backend}: needs a CUDA GPU; this worker runs on {device}")
            continue
        if backend == "_flash_3" and capability < _FA3_CAPABILITY:
            reasons.append(f"{backend}: FlashAttention-3 needs Hopper (compute capability 9.0); this GPU is "
                           f"{capability[0]}.{capability[1]}")
            continue
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        try:
            _check_attention_backend_requirements(AttentionBackendName(backend))
        except (RuntimeError, ImportError) as exc:
            reasons.append(f"{backend}: {exc}")
            continue
        return backend, reasons
    return "native", reasons


def choose_compile(mode: str, device: str) -> tuple[bool, str | None]:
    """Whether regional compile runs here, and why not."""
    if mode == "off":
        return False, "off in the profile"
    if mode == "auto" and not device.startswith("cuda"):
        return False, "auto compiles on CUDA only (on a CPU it costs a minute of start-up per model for little)"
    return True, None


def fp8_config() -> Any:
    """torchao's fp8 config: dynamic activation and weight scales, one per row (torchao's default is one per tensor,
    where a single outlier channel flattens the whole tensor's range; the runtime record says per-row)."""
    from torchao.quantization import PerRow

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    except ImportError:  # older torchao spells it as a function
        from torchao.quantization import float8_dynamic_activation_float8_weight

        return float8_dynamic_activation_float8_weight(granularity=PerRow())


def apply_load_profile(profile: LoadProfile, pipelines: dict[str, Any], denoisers: tuple[str, ...], device: str,
                       dtype: torch.dtype, dispatches: bool, no_fusing: str | None = None,
                       takes_loras: bool = False) -> Applied:
    """Apply `profile` to the loaded pipelines' denoisers (shared between roles, so each is touched once).
    `no_fusing`: why the family's attention processors cannot be fused (None: they can). A family that takes
    LoRAs gets compiled LoRA slots before it compiles."""

    main = next(iter(pipelines.values()))
    modules = [getattr(main, name) for name in denoisers if getattr(main, name, None) is not None]
    applied = Applied(weights_dtype=str(dtype).removeprefix("torch."),
                      activations_dtype=str(dtype).removeprefix("torch."))

    backend, reasons = choose_attention(profile.attention, device, dispatches)
    if backend != "native":
        for module in modules:
            module.set_attention_backend(backend)
    applied.attention = {"requested": list(profile.attention), "active": backend, "reasons": reasons}
    for reason in reasons:
        _once(f"attention {reason}")

    _fuse_qkv(profile, main, no_fusing, applied)
    if profile.channels_last:
        applied.channels_last = _channels_last(main, (*denoisers, "vae"))

    compile_on, compile_reason = choose_compile(profile.compile, device)
    if compile_on and takes_loras and profile.lora_slots > 0:
        from pipelines.lora_slots import install_slots

        present = [name for name in denoisers if getattr(main, name, None) is not None]
        for index, (name, module) in enumerate(zip(present, modules, strict=True)):
            prefix = f"{name}." if index else ""
            others = tuple(f"{n}." for n in present[1:]) if not index else ()
            applied.slot_plans[name] = install_slots(module, tuple(getattr(module, "_repeated_blocks", ()) or ()),
                                                     profile.lora_slots, profile.lora_max_rank, prefix, others)
    if compile_on:
        # Automatic dynamic shapes: the first shape compiles static (the fastest kernels, for the default size most
        # requests use); the first other size recompiles once with symbolic sizes, after which no size recompiles
        # (torch._dynamo's recompile limit is the backstop). The warm-up renders both at load.
        for module in modules:
            if profile.step_cache_hooks:
                # The step cache's hooks replace each block's forward with Python that decides whether to run it;
                # compiled around them, dynamo would recompile per block type and state. So each block's own
                # forward is compiled here, and the hooks (installed per cached call) call the compiled forward.
                _compile_block_forwards(module)
            else:
                module.compile_repeated_blocks(fullgraph=True)

    applied.compile = {"requested": profile.compile, "active": compile_on, "reason": compile_reason,
                       "regions": list(getattr(modules[0], "_repeated_blocks", []) or []) if modules else []}
    return applied


def _fuse_qkv(profile: LoadProfile, main: Any, no_fusing: str | None, applied: Applied) -> None:
    fuse = profile.fuse_qkv and hasattr(main, "fuse_qkv_projections") and no_fusing is None
    if fuse:
        main.fuse_qkv_projections()  # the modules are shared between roles
    applied.fused_qkv = {"requested": profile.fuse_qkv, "active": fuse,
                         "reason": no_fusing if profile.fuse_qkv and not fuse else None}
    if profile.fuse_qkv and no_fusing:
        _once(f"fused QKV off: {no_fusing}")


def _channels_last(main: Any, names: tuple[str, ...]) -> bool:
    """Put the 2-D convolution modules among `names` in channels-last layout; whether any was."""
    import torch

    changed = False
    for name in names:
        module = getattr(main, name, None)
        # The layout is for 2-D convolutions only: a transformer has none, and a video VAE's 5-D kernels stay as
        # they are (torch refuses to convert them).
        ranks = {p.dim() for p in module.parameters()} if module is not None else set()
        if 4 in ranks and 5 not in ranks:
            module.to(memory_format=torch.channels_last)
            changed = True
    return changed


def _compile_block_forwards(module: torch.nn.Module) -> None:
    """torch.compile each repeated block's forward in place (the region `compile_repeated_blocks` compiles)."""
    import torch

    names = set(getattr(module, "_repeated_blocks", None) or ())
    for block in module.modules():
        if type(block).__name__ in names:
            block.forward = torch.compile(block.forward, fullgraph=True)


def compile_counters() -> dict[str, int]:
    """Inductor's graph cache hits and misses in this process (a restart on a warm cache only hits)."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"fxgraph_cache_hit": int(inductor.get("fxgraph_cache_hit", 0)),
            "fxgraph_cache_miss": int(inductor.get("fxgraph_cache_miss", 0))}
