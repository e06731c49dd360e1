"""LoRA slots for compiled denoisers: per-image adapters without recompiling.

A compiled region's graph is specialised to the modules it traced, so wrapping a layer per call (what
pipelines/lora_runtime.py does on an eager model) would recompile. Instead, before compile, the attention
projections inside the repeated blocks get a `SlotLoraLinear` with fixed-size buffers: `slots` adapters of up to
`max_rank` each (A [slots x max_rank, in], B [out, slots x max_rank]) and a per-row scale table [MAX_ROWS,
slots x max_rank]. A call copies its adapters into the buffers and the rows' scales into the table (row r is image
r mod n: classifier-free guidance repeats the images); only tensor contents change, so the graphs compiled at load
(plain and adapted) serve every adapter, every scale and every mix. This is the hot-swap diffusers offers for one
adapter at a time (`enable_lora_hotswap(target_rank=...)`), per image.

A call whose adapters do not fit the slots (more distinct adapters than slots, a rank above `max_rank`, a layer
inside a compiled block that has no slot, more rows than the table) runs eagerly instead: the reason is recorded,
the render never fails, and nothing recompiles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipelines.lora_runtime import LoadedAdapter, WrappedLinear
from pipelines.render_types import AdapterUse

SLOT_LEAVES = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "to_qkv", "to_added_qkv")
"""The layers inside compiled blocks that get slots: the attention projections most LoRAs train."""
MAX_ROWS = 64
"""Batch rows the scale table covers (images x 2 under classifier-free guidance)."""
_FUSED = {"to_q": ("to_qkv", 0), "to_k": ("to_qkv", 1), "to_v": ("to_qkv", 2),
          "add_q_proj": ("to_added_qkv", 0), "add_k_proj": ("to_added_qkv", 1), "add_v_proj": ("to_added_qkv", 2)}


class SlotLoraLinear(WrappedLinear):
    """A Linear with fixed LoRA buffers; `active` switches the update on (one extra compiled graph, made at load)."""

    def __init__(self, base: nn.Linear, width: int) -> None:
        super().__init__(base)
        param = base.weight
        self.register_buffer("lora_a", torch.zeros(width, base.in_features, dtype=param.dtype, device=param.device),
                             persistent=False)
        self.register_buffer("lora_b", torch.zeros(base.out_features, width, dtype=param.dtype, device=param.device),
                             persistent=False)
        self.register_buffer("row_scale", torch.zeros(MAX_ROWS, width, dtype=param.dtype, device=param.device),
                             persistent=False)
        self.active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.active:
            return y
        rows = x.shape[0]
        scale = self.row_scale[:rows].reshape(rows, *([1] * (x.dim() - 2)), -1)
        return y + nn.functional.linear(nn.functional.linear(x, self.lora_a) * scale, self.lora_b)


@dataclass(frozen=True)
class SlotPlan:
    """The slots of one denoiser: slotted layers by module path, the adapters and rank they hold."""

    layers: Mapping[str, SlotLoraLinear]
    slots: int
    max_rank: int
    regions: tuple[str, ...]
    """Module paths of the compiled blocks (a layer under one of them without a slot forces an eager call)."""
    prefix: str = ""
    """How adapter layer paths name this denoiser ("" for the first, "transformer_2." for Wan's second expert)."""
    others: tuple[str, ...] = ()
    """The other denoisers' prefixes (their layers are not this plan's)."""

    @property
    def nbytes(self) -> int:
        """Device bytes the slots' buffers take (counted with the model's weights by the memory policy)."""
        return sum(b.numel() * b.element_size() for layer in self.layers.values() for b in layer.buffers()
                   if b is not layer.base.weight and b is not getattr(layer.base, "bias", None))

    def own(self, path: str) -> str | None:
        """An adapter layer path relative to this denoiser, None when it is another denoiser's."""
        if self.prefix:
            return path.removeprefix(self.prefix) if path.startswith(self.prefix) else None
        return None if path.startswith(self.others) else path


def install_slots(denoiser: nn.Module, block_types: Sequence[str], slots: int, max_rank: int, prefix: str = "",
                  others: tuple[str, ...] = ()) -> SlotPlan:
    """Put a SlotLoraLinear on every attention projection inside the repeated (compiled) blocks. Call before
    compiling."""
    layers: dict[str, SlotLoraLinear] = {}
    regions = []
    for path, block in list(denoiser.named_modules()):
        if type(block).__name__ not in block_types:
            continue
        regions.append(path)
        for sub_path, module in list(block.named_modules()):
            if not isinstance(module, nn.Linear) or not sub_path.endswith(SLOT_LEAVES) or \
                    not any(sub_path == leaf or sub_path.endswith(f".{leaf}") for leaf in SLOT_LEAVES):
                continue
            parent_path, _, leaf = sub_path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            slot = SlotLoraLinear(module, slots * max_rank)
            setattr(parent, leaf, slot)
            layers[f"{path}.{sub_path}"] = slot
    return SlotPlan(layers, slots, max_rank, tuple(regions), prefix, others)


def why_not_slotted(plan: SlotPlan, per_image: Sequence[tuple[AdapterUse, ...]],
                    adapters: Mapping[str, LoadedAdapter], fused: bool) -> str | None:
    """Why this call's adapters cannot run in the slots (None: they can)."""
    used = sorted({u.sha256 for uses in per_image for u in uses})
    if len(used) > plan.slots:
        return f"{len(used)} different adapters in one call, {plan.slots} slots"
    if len(per_image) * 2 > MAX_ROWS:
        return f"{len(per_image)} images in one call, slots cover {MAX_ROWS // 2}"
    for sha in used:
        adapter = adapters[sha]
        if adapter.rank > plan.max_rank:
            return f"adapter rank {adapter.rank} is above the compiled slots' max rank {plan.max_rank}"
        for full in adapter.layers:
            path = plan.own(full)
            if path is None:
                continue
            target = _slot_path(path, fused)
            if target not in plan.layers and any(path.startswith(f"{r}.") for r in plan.regions):
                return f"the adapter changes {full}, which has no slot in the compiled block"
    return None


def _slot_path(path: str, fused: bool) -> str:
    parent, _, leaf = path.rpartition(".")
    if fused and leaf in _FUSED:
        return f"{parent}.{_FUSED[leaf][0]}"
    return path


@contextmanager
def slots_filled(plan: SlotPlan, per_image: Sequence[tuple[AdapterUse, ...]], adapters: Mapping[str, LoadedAdapter],
                 fused: bool) -> Iterator[set[str]]:
    """Copy the call's adapters into the slots and switch every slotted layer on (all of them, so the compiled
    graph is always the one adapted variant; untouched layers add zero); off again after. Yields the adapter
    layer paths it placed (the rest, outside the compiled blocks, the caller wraps per call)."""
    used = sorted({u.sha256 for uses in per_image for u in uses})
    placed: set[str] = set()
    rank = plan.max_rank
    with torch.no_grad():
        for layer in plan.layers.values():
            layer.row_scale.zero_()  # what earlier calls left in the buffers is multiplied by zero
        for slot_index, sha in enumerate(used):
            weights = torch.tensor([sum(u.scale for u in per_image[row % len(per_image)] if u.sha256 == sha)
                                    for row in range(MAX_ROWS)])
            cleared: set[str] = set()
            for full, delta in adapters[sha].layers.items():
                path = plan.own(full)
                if path is None:
                    continue
                target = _slot_path(path, fused)
                layer = plan.layers.get(target)
                if layer is None:
                    continue
                slot = slice(slot_index * rank, (slot_index + 1) * rank)
                if target not in cleared:  # a fused projection takes up to three pieces in one slot
                    layer.lora_a[slot] = 0
                    layer.lora_b[:, slot] = 0
                    cleared.add(target)
                cols = slice(slot_index * rank, slot_index * rank + delta.a.shape[0])
                third = _FUSED[path.rpartition(".")[2]][1] if target != path else None
                rows = slice(None) if third is None else slice(third * layer.out_features // 3,
                                                              (third + 1) * layer.out_features // 3)
                layer.lora_a[cols] = delta.a.to(layer.lora_a)
                layer.lora_b[rows, cols] = delta.b.to(layer.lora_b)
                layer.row_scale[:, cols] = (weights * delta.factor).to(layer.row_scale)[:, None]
                placed.add(full)
        for layer in plan.layers.values():
            layer.active = True
    try:
        yield placed
    finally:
        for layer in plan.layers.values():
            layer.active = False


@contextmanager
def all_slots_active(plan: SlotPlan) -> Iterator[None]:
    """Every slot on with zero updates: the warm-up renders once like this, so the adapted graph compiles at load."""
    with torch.no_grad():
        for layer in plan.layers.values():
            layer.lora_a.zero_()
            layer.lora_b.zero_()
            layer.row_scale.zero_()
            layer.active = True
    try:
        yield
    finally:
        for layer in plan.layers.values():
            layer.active = False
