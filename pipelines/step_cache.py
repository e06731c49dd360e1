"""The per-call step cache: fewer full denoiser passes than the schedule has steps (`step_cache_call`).

Two kinds, both diffusers' own hooks (no extra dependency pinning its own diffusers). The hooks are installed for a
cached call and removed after it, so ids sharing weights can differ (a fast id cached, a quality id exact), an exact
call pays nothing for them (left in place, they cost the demo Kontext 27 ms a call even when nothing is skipped),
and they wrap each block's own compiled forward (pipelines/acceleration.py compiles block forwards when a cache
may be used), so a preset never makes a compiled block recompile:

- `taylorseer` (TaylorSeer Lite, the variant OpenVINO GenAI ships): a full pass every `interval` steps after a
  warm-up; on the steps between, no block runs at all and the denoiser's output is extrapolated from the last two
  full passes (first-order Taylor). The schedule is fixed, so the passes a preset spends are the same on every
  prompt, on the demo weights and on the real ones, and each image of a shared call is predicted from its own
  outputs only (a merged call equals its solo renders).
- `fbcache` (First Block Cache): the first block runs every step, and the rest is skipped while the first block's
  output changes by less than a threshold. It adapts to the content, but its decision is taken over the whole
  batch, its skip rate on random demo weights says little about trained ones (hence a separate demo threshold),
  and the first block is paid on every step (1/57 of FLUX.1, half of the 2-block demo model).

MagCache needs per-model calibrated ratios (not possible without the real weights here); TaylorSeer's default
(non-lite) mode predicts only the attention modules and still runs each block's MLP, the larger share of a
trained DiT's FLOPs. Either kind resets its state at the start of every denoising loop (the scheduler's
`set_timesteps`), so the tiles of a refine pass never predict from one another.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CACHE_KINDS = ("none", "fbcache", "taylorseer")


@dataclass(frozen=True)
class StepCache:
    """A model id's per-call step cache: none (quality presets), `fbcache` with a skip threshold, or `taylorseer`
    with a full pass every `interval` steps after `warmup_steps` full ones."""

    kind: str = "none"
    threshold: float = 0.0
    interval: int = 0
    warmup_steps: int = 0

    def encode(self) -> str:
        """Text for RenderParams.preset and batch keys ('' for none)."""
        if self.kind == "fbcache":
            return f"fbcache:{self.threshold:g}"
        if self.kind == "taylorseer":
            return f"taylorseer:{self.interval}:{self.warmup_steps}"
        return ""

    @classmethod
    def decode(cls, text: str) -> StepCache:
        """Inverse of encode."""
        if not text:
            return cls()
        kind, *values = text.split(":")
        if kind == "taylorseer":
            return cls(kind, interval=int(values[0]), warmup_steps=int(values[1]))
        return cls(kind, threshold=float(values[0]))

    def describe(self) -> dict[str, Any] | None:
        """JSON for the model lists (None when uncached)."""
        if self.kind == "fbcache":
            return {"kind": self.kind, "threshold": self.threshold}
        if self.kind == "taylorseer":
            return {"kind": self.kind, "interval": self.interval, "warmup_steps": self.warmup_steps}
        return None

    def passes(self, steps: int) -> int | None:
        """Full denoiser passes a call of `steps` steps spends (None: it depends on the content, as with fbcache)."""
        if self.kind == "none":
            return steps
        if self.kind == "taylorseer":
            return sum(1 for s in range(steps) if s < self.warmup_steps or (s - self.warmup_steps - 1) % self.interval == 0)
        return None


_FBC_HOOK = "fbc_leader_block_hook"
_TAYLORSEER_HOOK = "taylorseer_cache"


def _hooks(module: Any, name: str) -> list[Any]:
    """The diffusers hooks called `name` anywhere in `module`."""
    found = []
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is not None and (hook := registry.get_hook(name)) is not None:
            found.append(hook)
    return found


def _skip_deciders(module: Any) -> list[tuple[Any, str]]:
    """(hook, method) pairs whose method decides, once per denoiser call, whether the call is a full pass: FBC's
    head-block decision, and the TaylorSeer hook on proj_out (the one that computes or predicts the output)."""
    pairs = [(h, "_should_compute_remaining_blocks") for h in _hooks(module, _FBC_HOOK)]
    proj_out = getattr(module, "proj_out", None)
    registry = getattr(proj_out, "_diffusers_hook", None)
    if registry is not None and (hook := registry.get_hook(_TAYLORSEER_HOOK)) is not None:
        pairs.append((hook, "_measure_should_compute"))
    return pairs


class PassCounter:
    """Counts full denoiser passes: denoiser calls, less the calls the step cache skipped or predicted. Both are
    read outside compiled regions (the denoiser's own call, and the cache's decision, which diffusers keeps out
    of compilation), so counting never makes dynamo recompile."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.calls = 0
        self.skipped = 0
        self._undo: list[Any] = [m.register_forward_hook(self._count_call).remove for m in modules]
        for module in modules:
            if not getattr(module, "is_cache_enabled", False):
                continue
            for hook, method in _skip_deciders(module):
                decide = getattr(hook, method)

                def counted(*args: Any, _decide: Any = decide) -> Any:
                    decision = _decide(*args)
                    compute = decision[0] if isinstance(decision, tuple) else decision
                    if not compute:
                        self.skipped += 1
                    return decision

                setattr(hook, method, counted)
                self._undo.append(lambda h=hook, m=method: delattr(h, m))

    @property
    def passes(self) -> int:
        """Denoiser calls that ran every block."""
        return self.calls - self.skipped

    def _count_call(self, *_: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        """Remove the counting."""
        for undo in self._undo:
            undo()


def _clear_cache_states(module: Any) -> None:
    """Forget what the step cache learnt in earlier denoising loops, keeping the cache context the pipeline set
    (diffusers' own reset drops the context too)."""
    from diffusers.hooks.hooks import StateManager

    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is None:
            continue
        for hook in registry.hooks.values():
            for manager in vars(hook).values():
                if isinstance(manager, StateManager):
                    for state in manager._state_cache.values():
                        state.reset()


def _cache_config(cache: StepCache, module: Any) -> Any:
    """diffusers' hook configuration for `cache` on `module`."""
    import torch
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if cache.kind == "fbcache":
        return FirstBlockCacheConfig(threshold=cache.threshold)
    if getattr(module, "proj_out", None) is None:
        raise ValueError(f"{type(module).__name__} has no proj_out to extrapolate: use fbcache or none")
    # Lite: every block stands down on a predicted step and proj_out's output is extrapolated. Factors in float32:
    # they are one tensor the size of the output, and bf16 differences lose the small steps.
    return TaylorSeerCacheConfig(cache_interval=cache.interval, disable_cache_before_step=cache.warmup_steps,
                                 max_order=1, taylor_factors_dtype=torch.float32, use_lite_mode=True)


@contextmanager
def step_cache_call(modules: list[torch.nn.Module], cache: StepCache, needs_context: bool,
                    schedulers: Sequence[Any] = ()) -> Iterator[PassCounter]:
    """Run one render with `cache` (its hooks installed for the render, removed after), counting full passes.
    `needs_context`: the pipeline does not set diffusers' cache context itself. `schedulers`: those of the
    pipelines the render may call; each denoising loop starts with their `set_timesteps`, where the cache's state
    is cleared (and its context set again), so a render of several loops (the tiles of a refine pass) never
    carries one loop's state into the next, nor loses the context a pipeline call drops when it ends."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    hooked: list[Any] = []
    undo: list[Any] = []
    try:
        for module in modules if cache.kind != "none" else ():
            if getattr(module, "is_cache_enabled", False):
                module.disable_cache()  # left by a call that died between installing and removing them
            module.enable_cache(_cache_config(cache, module))
            hooked.append(module)
        for scheduler in dict.fromkeys(schedulers) if hooked else ():
            original = scheduler.set_timesteps

            @functools.wraps(original)  # pipelines read its signature (retrieve_timesteps checks for `sigmas`)
            def set_timesteps(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                for module in hooked:
                    _clear_cache_states(module)
                    if needs_context:
                        # A pipeline call ends by resetting its denoiser's hooks, context included (diffusers'
                        # maybe_free_model_hooks): the next loop of this render needs it set again.
                        _set_cache_context(module, CacheContext("cond"))
                return _original(*args, **kwargs)

            scheduler.set_timesteps = set_timesteps
            undo.append(lambda s=scheduler: delattr(s, "set_timesteps"))
        counter = PassCounter(modules)
        try:
            with ExitStack() as stack:
                if needs_context:
                    for module in hooked:
                        stack.enter_context(module.cache_context("cond"))
                yield counter
        finally:
            counter.close()
    finally:
        for restore in undo:
            restore()
        for module in hooked:
            module.disable_cache()
