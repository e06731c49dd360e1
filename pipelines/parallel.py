"""One pipeline call spread over the ranks of a gang: k processes, one device each, joined by torch.distributed.

Every rank holds the whole pipeline and runs the same call with the same seeds; the denoiser's work is divided:

- **Ulysses / ring attention** (diffusers' context parallel, `ContextParallelConfig`): each rank holds 1/k of the
  token sequence; attention exchanges heads (Ulysses: all-to-all) or key/value blocks (ring) and the output is
  gathered, so the pipeline around the denoiser sees whole tensors. Ring attention needs an attention kernel that
  returns the log-sum-exp (flash, cuDNN, sage): a GPU; Ulysses also runs on gloo on a CPU.
- **CFG parallel**, two ways, as the family's pipeline runs true classifier-free guidance (`Family.cfg_style`):
  "pairs": the denoiser is called twice per step (conditional, then unconditional) and the two are combined only
  after the second call. With two CFG ranks, the first computes the conditional pass and the second the
  unconditional one; after the second call the two results are exchanged and written into the tensors the
  pipeline already holds, so both ranks combine identical values and stay in step. The placeholders need the
  outputs' shapes: the first pair of a call (per denoiser and input shape) runs on both ranks to learn them, every
  later pair is split. "batch": one call on a doubled batch (LTX-2); each rank runs its half of every per-sample
  input and the halves are gathered.

The two compose on a (cfg, ring, ulysses) device mesh: 4 ranks as 2 CFG x Ulysses-2 run each CFG branch over two.
The VAE decode is tiled on every rank (diffusers 0.42 has no decode split across devices).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from pipelines.parallel_plan import ParallelPlan


@contextmanager
def _accelerator_count_for_cpu() -> Iterator[None]:
    """diffusers computes `rank % torch.accelerator.device_count()` while setting parallelism up, a division by zero
    on a machine without an accelerator; there the count reads 1 for the duration (the device resolves to cpu).
    Only rank processes call this: each is a process of its own, so nothing else sees the patch."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = original  # type: ignore[assignment]


def device_mesh(plan: ParallelPlan, device_type: str) -> Any:
    """The gang's (cfg, ring, ulysses) mesh over the default process group."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (plan.cfg, plan.ring, plan.ulysses),
                            mesh_dim_names=("cfg", "ring", "ulysses"))


def apply_plan(denoisers: list[torch.nn.Module], plan: ParallelPlan, device_type: str,
               cfg_style: str = "pairs") -> CfgSplit | None:
    """Spread `denoisers` over the gang as `plan` says (once per loaded model); the CFG split to switch per call."""
    if plan.gpus != dist.get_world_size():
        raise ValueError(f"the plan needs {plan.gpus} ranks; the gang has {dist.get_world_size()}")
    mesh = device_mesh(plan, device_type)
    if plan.ulysses * plan.ring > 1:
        from diffusers import ContextParallelConfig

        with _accelerator_count_for_cpu():
            for module in denoisers:
                # Uneven: sequences of any length (Qwen's text tokens are not padded to a fixed count).
                module.enable_parallelism(config=ContextParallelConfig(
                    ulysses_degree=plan.ulysses, ring_degree=plan.ring, mesh=mesh,
                    ulysses_anything=plan.uneven and plan.ring == 1, ring_anything=plan.uneven and plan.ring > 1))
    if plan.cfg == 1:
        return None
    split = CfgSplit(mesh.get_group("cfg"), mesh["cfg"].get_local_rank(), cfg_style)
    for module in denoisers:
        split.wrap(module)
    return split


Outputs = tuple[torch.Tensor, ...]


class CfgSplit:
    """Divides classifier-free guidance between two CFG ranks: each (conditional, unconditional) pair of denoiser
    calls ("pairs"), or each call on a doubled batch ("batch"); see the module's docstring. `active` is set per
    pipeline call: only a call that runs true CFG is split."""

    def __init__(self, group: Any, index: int, style: str = "pairs") -> None:
        if style not in ("pairs", "batch"):
            raise ValueError(f"unknown CFG style {style!r}")
        self.group = group
        self.index = index
        """0 computes the conditional passes (or the first half of a doubled batch), 1 the unconditional ones."""
        self.style = style
        self.active = False
        self.split_pairs = 0
        self._calls = 0
        self._shapes: dict[tuple[int, tuple[int, ...]], list[tuple[torch.Size, torch.dtype]]] = {}
        self._pending: tuple[Outputs, bool] | None = None

    @contextmanager
    def call(self, true_cfg: bool) -> Iterator[None]:
        """Around one pipeline call: pairs are split only while it runs with true CFG."""
        self.active, self._calls, self._pending, self.split_pairs = true_cfg, 0, None, 0
        try:
            yield
        finally:
            self.active, self._pending = False, None

    def wrap(self, module: torch.nn.Module) -> None:
        """Route `module`'s forward through the split (after any context-parallel hooks diffusers installed)."""
        inner: Callable[..., Any] = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._forward(module, inner, args, kwargs)

        module.forward = forward  # type: ignore[method-assign]

    def _forward(self, module: torch.nn.Module, inner: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        if not self.active:
            return inner(*args, **kwargs)
        if self.style == "batch":
            return self._halves(inner, args, kwargs)
        conditional = self._calls % 2 == 0
        self._calls += 1
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        key = (id(module), tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else ())
        shapes = self._shapes.get(key)
        mine = (self.index == 0) == conditional
        if conditional:
            if shapes is None or mine:
                out = inner(*args, **kwargs)
                self._shapes[key] = [(t.shape, t.dtype) for t in _tensors(out)]
                self._pending = (_tensors(out), shapes is None)
                return out
            placeholder = tuple(torch.empty(s, dtype=d, device=hidden.device) for s, d in shapes)
            self._pending = (placeholder, False)
            return _rebuild(placeholder)
        assert self._pending is not None, "an unconditional pass came without its conditional one"
        cond, both = self._pending
        self._pending = None
        if both:  # the first pair: both ranks compute both passes (learning the shapes)
            return inner(*args, **kwargs)
        if mine:
            out = _tensors(inner(*args, **kwargs))
        else:
            out = tuple(torch.empty_like(t) for t in cond)
        sent = cond if self.index == 0 else out
        for i, tensor in enumerate(sent):
            gathered = [torch.empty_like(tensor) for _ in range(2)]
            dist.all_gather(gathered, tensor.contiguous(), group=self.group)
            if self.index == 1:
                cond[i].copy_(gathered[0])
            else:
                out[i].copy_(gathered[1])
        self.split_pairs += 1
        return _rebuild(out)


    def _halves(self, inner: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One call on a doubled batch: this rank's half of every per-sample input, the halves gathered."""
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        batch = hidden.shape[0] if isinstance(hidden, torch.Tensor) else 1
        if batch % 2:
            return inner(*args, **kwargs)
        half = batch // 2
        low = self.index * half

        def part(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                return value[low:low + half]
            return value

        out = _tensors(inner(*[part(a) for a in args], **{k: part(v) for k, v in kwargs.items()}))
        whole = []
        for tensor in out:
            gathered = [torch.empty_like(tensor) for _ in range(2)]
            dist.all_gather(gathered, tensor.contiguous(), group=self.group)
            whole.append(torch.cat(gathered, dim=0))
        self.split_pairs += 1
        return tuple(whole)


def _tensors(out: Any) -> Outputs:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out):
        return out
    raise TypeError(f"CFG parallel needs the denoiser called with return_dict=False; it returned {type(out).__name__}")


def _rebuild(tensors: Outputs) -> tuple[torch.Tensor, ...]:
    # Pipelines call denoisers with return_dict=False and index [0]: a tuple serves both one output and several.
    return tensors
