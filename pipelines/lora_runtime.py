"""LoRA adapters at render time: per-image adapters in one pipeline call, applied without touching the weights.

An adapter file is converted once (diffusers' own loaders turn kohya, xlabs and ComfyUI layouts into PEFT's
lora_A/lora_B) into plain tensors per target layer and kept in host RAM by content hash (`AdapterCache`, LRU by
bytes). For a call, `adapters_applied` wraps each targeted `Linear` of the denoiser in a `GroupedLoraLinear`
that adds, for every row of the batch, that row's own adapters:

    y = W x + B_cat (s_row * (A_cat x))

where A_cat stacks the A matrices of every adapter in the call ([sum of ranks, in]), B_cat places each B at its
columns ([out, sum of ranks]) and s_row holds, per batch row, scale x alpha/rank on the columns of that row's
adapters (zero elsewhere). Two matmuls per layer whatever the number of adapters, so eight requests with eight
different adapters share one call, and a row's output depends only on its own adapters (a mixed batch equals each
request rendered alone). The wrappers are removed when the call ends: the model is never reloaded or modified,
switching adapters costs a few tensor copies, and a compiled model's graphs see the original modules again
(adapted calls run eagerly: recorded).

Fused projections (SDXL's to_qkv) take the to_q/to_k/to_v adapters as row blocks of one grouped update.
"""

from __future__ import annotations

import inspect as pyinspect
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipelines.lora_format import LoraFormatError, read_header
from pipelines.render_types import AdapterUse, ParamError

_FUSED = {"to_q": ("to_qkv", 0), "to_k": ("to_qkv", 1), "to_v": ("to_qkv", 2),
          "add_q_proj": ("to_added_qkv", 0), "add_k_proj": ("to_added_qkv", 1), "add_v_proj": ("to_added_qkv", 2)}
_COMPONENTS = ("transformer_2", "transformer", "unet")
_PEFT_KEY = re.compile(r"^(?P<component>[a-z_0-9]+?)\.(?P<module>.+)\.lora_(?P<kind>A|B)\.weight$")


@dataclass(frozen=True)
class LayerDelta:
    """One layer's low-rank update: A [rank, in], B [out, rank], and alpha / rank."""

    a: torch.Tensor
    b: torch.Tensor
    factor: float


@dataclass
class LoadedAdapter:
    """An adapter converted to per-layer updates (CPU, float32), keyed by component-qualified module path."""

    sha256: str
    layers: dict[str, LayerDelta]
    rank: int
    nbytes: int
    ignored: list[str] = field(default_factory=list)
    """What the file holds that is not applied (text-encoder layers, biases), for the job record."""


def load_adapter(sha256: str, data: bytes, pipeline_class: type, denoisers: Sequence[str]) -> LoadedAdapter:
    """Convert a safetensors LoRA with the family's diffusers loader (`lora_state_dict`, which knows the
    community layouts) and split it into per-layer updates for the first denoiser (or a named second one)."""
    from safetensors.torch import load as load_safetensors

    _tensors, metadata = read_header(data)  # checks the file before a tensor is built
    raw = load_safetensors(data)
    kwargs: dict[str, Any] = {}
    if "return_alphas" in pyinspect.signature(pipeline_class.lora_state_dict).parameters:
        kwargs["return_alphas"] = True
    result = pipeline_class.lora_state_dict(raw, **kwargs)
    state, alphas = _state_and_alphas(result)
    state = _to_peft(state)
    adapter_meta = _adapter_metadata(metadata)
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    ignored: set[str] = set()
    for key, tensor in state.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            ignored.add(key.split(".", 1)[0] if "." in key else key)
            continue
        component = m["component"] if m["component"] in _COMPONENTS else None
        if component is None or (component not in denoisers and not (component == "unet" and "unet" in denoisers)):
            ignored.add(m["component"])
            continue
        pairs.setdefault((component, m["module"]), {})[m["kind"]] = tensor
    alpha_of = {owner[1]: value for key, value in alphas.items() if (owner := _alpha_key(key)) is not None}
    layers: dict[str, LayerDelta] = {}
    for (component, module), halves in pairs.items():
        if set(halves) != {"A", "B"}:
            raise LoraFormatError("invalid_lora", f"layer {module!r} has only one of its lora_A/lora_B halves")
        a, b = halves["A"].float().contiguous(), halves["B"].float().contiguous()
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise LoraFormatError("unsupported_format", f"layer {module!r} is not a linear LoRA (LoCon or DoRA)")
        rank = a.shape[0]
        alpha = _alpha_for(component, module, rank, alpha_of, adapter_meta)
        path = module if component == denoisers[0] else f"{component}.{module}"
        layers[path] = LayerDelta(a, b, alpha / rank)
    if not layers:
        raise LoraFormatError("invalid_lora", "the adapter has no layers on this model's denoiser")
    nbytes = sum(d.a.numel() * 4 + d.b.numel() * 4 for d in layers.values())
    return LoadedAdapter(sha256, layers, max(d.a.shape[0] for d in layers.values()), nbytes,
                         sorted(f"{name} layers" for name in ignored))


def _state_and_alphas(result: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """diffusers' loaders answer a state dict, or a tuple of it with network alphas and/or metadata."""
    if isinstance(result, dict):
        return result, {}
    state, alphas = result[0], {}
    for extra in result[1:]:
        if isinstance(extra, dict) and extra and all(isinstance(v, (int, float)) or torch.is_tensor(v)
                                                      for v in extra.values()) and \
                any(k.endswith("alpha") for k in extra):
            alphas = {k: float(v) for k, v in extra.items()}
    return state, alphas


def _to_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers names (`lora.down`, `processor.to_q_lora.down`) as PEFT's lora_A/lora_B."""
    if all(".lora_A." in k or ".lora_B." in k for k in state):
        return state
    from diffusers.utils import convert_unet_state_dict_to_peft

    return convert_unet_state_dict_to_peft(state)


def _alpha_key(key: str) -> tuple[str, str] | None:
    """(component, module) an alpha entry belongs to, whatever naming the loader left it in."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    base = key.removesuffix(".alpha")
    if not base.endswith(".weight"):
        base += ".lora.down.weight"
    converted = next(iter(convert_unet_state_dict_to_peft({base: torch.zeros(1)})))
    m = _PEFT_KEY.match(converted)
    return (m["component"], m["module"]) if m else None


def _adapter_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """PEFT's adapter config as diffusers writes it into the header (`lora_adapter_metadata`)."""
    raw = metadata.get("lora_adapter_metadata")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _alpha_for(component: str, module: str, rank: int, alpha_of: Mapping[str, float],
               meta: Mapping[str, Any]) -> float:
    """The layer's alpha: kohya's per-layer alpha (`alpha_of`: module -> alpha), else PEFT's alpha_pattern or
    lora_alpha, else its rank (scale 1)."""
    if module in alpha_of:
        return alpha_of[module]
    pattern = meta.get(f"{component}.alpha_pattern") or {}
    for name, value in pattern.items():
        if module == name or module.endswith(f".{name}"):
            return float(value)
    alpha = meta.get(f"{component}.lora_alpha")
    return float(alpha) if alpha is not None else float(rank)


class AdapterCache:
    """Converted adapters in host RAM by content hash, least recently used dropped first past the byte budget.
    One per worker; the adapters of the call being set up are never dropped."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def held(self) -> frozenset[str]:
        """Content hashes held now."""
        with self._lock:
            return frozenset(self._items)

    @property
    def nbytes(self) -> int:
        """Host bytes the held adapters take."""
        with self._lock:
            return sum(a.nbytes for a in self._items.values())

    def get(self, sha256: str, family_key: str) -> LoadedAdapter | None:
        """The converted adapter (for the family it was converted for), marked recently used."""
        with self._lock:
            found = self._items.get(f"{family_key}:{sha256}")
            if found is not None:
                self._items.move_to_end(f"{family_key}:{sha256}")
                self.hits += 1
            return found

    def put(self, family_key: str, adapter: LoadedAdapter, keep: frozenset[str] = frozenset()) -> None:
        """Keep `adapter`, dropping the least recently used others (never those in `keep`) past the budget."""
        with self._lock:
            self._items[f"{family_key}:{adapter.sha256}"] = adapter
            self.loads += 1
            total = sum(a.nbytes for a in self._items.values())
            for key in list(self._items):
                if total <= self.budget_bytes:
                    break
                if key.split(":", 1)[1] in keep or key == f"{family_key}:{adapter.sha256}":
                    continue
                total -= self._items.pop(key).nbytes


class WrappedLinear(nn.Module):
    """A Linear with a LoRA update around it; code that reads the layer's `weight` or sizes still gets the base's."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight."""
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


class GroupedLoraLinear(WrappedLinear):
    """A Linear plus the per-row low-rank updates of the current call (see the module docstring)."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, row_scale: torch.Tensor) -> None:
        super().__init__(base)
        self.a = a
        self.b = b
        self.row_scale = row_scale
        """[images, sum of ranks]; one row broadcasts to every batch row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = nn.functional.linear(x.to(self.a.dtype), self.a)
        scale = self.row_scale
        rows = x.shape[0] if x.dim() > 1 else 1
        if scale.shape[0] > 1:
            if rows % scale.shape[0]:
                raise RuntimeError(f"batch of {rows} rows does not split into {scale.shape[0]} images' adapters")
            # Classifier-free guidance stacks [uncond images, cond images]: the images' order repeats.
            scale = scale.repeat(rows // scale.shape[0], 1)
        shape = (scale.shape[0],) + (1,) * (x.dim() - 2) + (scale.shape[1],) if x.dim() > 1 else (scale.shape[1],)
        delta = nn.functional.linear(h * scale.reshape(shape), self.b)
        return y + delta.to(y.dtype)


@dataclass
class AppliedAdapters:
    """What a call ran with: layers wrapped, adapters in it, and anything not applied."""

    layers: int = 0
    adapters: int = 0
    ignored: list[str] = field(default_factory=list)
    slotted: int = 0
    """Adapter layers that ran in a compiled model's LoRA slots (pipelines/lora_slots.py)."""
    uncompiled: str | None = None
    """Why a compiled model ran this call eagerly (its adapters did not fit the slots)."""


def _target(root: nn.Module, path: str) -> tuple[nn.Module, str, int | None]:
    """(module to wrap, its path, which third of a fused projection) for an adapter layer's module path. A layer
    with compiled LoRA slots (pipelines/lora_slots.py) is wrapped inside its slot, around the plain Linear."""
    module = root.get_submodule(path)
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    fused = _FUSED.get(leaf)
    third = None
    if fused and getattr(parent, "fused_projections", False) and hasattr(parent, fused[0]):
        module, path, third = getattr(parent, fused[0]), f"{parent_path}.{fused[0]}" if parent_path else fused[0], \
            fused[1]
    if isinstance(module, WrappedLinear):
        return module.base, f"{path}.base", third
    return module, path, third


@contextmanager
def adapters_applied(denoisers: Mapping[str, nn.Module], per_image: Sequence[tuple[AdapterUse, ...]],
                     adapters: Mapping[str, LoadedAdapter], device: torch.device | str,
                     dtype: torch.dtype) -> Iterator[AppliedAdapters]:
    """Wrap the layers the call's adapters target for the duration of one call; `per_image` holds each image's
    adapters (one entry for a call whose images all use the same ones). Restores the original modules on exit."""
    applied = AppliedAdapters()
    used = sorted({u.sha256 for uses in per_image for u in uses})
    if not used:
        yield applied
        return
    applied.adapters = len(used)
    names = list(denoisers)
    # Per target module: its pieces (adapter, delta, third of a fused projection).
    pieces: dict[tuple[str, str], list[tuple[str, LayerDelta, int | None]]] = {}
    modules: dict[tuple[str, str], nn.Module] = {}
    for sha in used:
        adapter = adapters[sha]
        for path, delta in adapter.layers.items():
            component, _, module_path = path.partition(".") if path.split(".", 1)[0] in names[1:] else \
                (names[0], "", path)
            root = denoisers[component]
            try:
                module, where, third = _target(root, module_path)
            except AttributeError:
                raise ParamError("loras", f"adapter {sha[:12]} targets {module_path}, which this model does not "
                                 "have: it was trained for another model family") from None
            if not isinstance(module, nn.Linear) or module.in_features != delta.a.shape[1] or (
                    third is None and module.out_features != delta.b.shape[0]):
                raise ParamError("loras", f"adapter {sha[:12]} does not fit {module_path} of this model (shape "
                                 f"{tuple(delta.b.shape[:1]) + tuple(delta.a.shape[1:])}): it was trained for "
                                 "another model family")
            pieces.setdefault((component, where), []).append((sha, delta, third))
            modules[(component, where)] = module
    wrapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for (component, where), parts in pieces.items():
            base = modules[(component, where)]
            a, b, scale = _grouped(base, parts, per_image, device, dtype)
            parent_path, _, leaf = where.rpartition(".")
            parent = denoisers[component].get_submodule(parent_path) if parent_path else denoisers[component]
            setattr(parent, leaf, GroupedLoraLinear(base, a, b, scale))
            wrapped.append((parent, leaf, base))
        applied.layers = len(wrapped)
        yield applied
    finally:
        for parent, leaf, base in wrapped:
            setattr(parent, leaf, base)


def _grouped(base: nn.Linear, parts: list[tuple[str, LayerDelta, int | None]],
             per_image: Sequence[tuple[AdapterUse, ...]], device: torch.device | str, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A_cat, B_cat and the per-image scale matrix of one wrapped layer."""
    ranks = [d.a.shape[0] for _, d, _ in parts]
    total = sum(ranks)
    a = torch.cat([d.a for _, d, _ in parts]).to(device, dtype)
    b = torch.zeros(base.out_features, total)
    third_rows = base.out_features // 3
    col = 0
    for (_sha, d, third), r in zip(parts, ranks, strict=True):
        rows = slice(None) if third is None else slice(third * third_rows, (third + 1) * third_rows)
        b[rows, col:col + r] = d.b
        col += r
    scale = torch.zeros(len(per_image), total)
    for i, uses in enumerate(per_image):
        col = 0
        for (sha, d, _), r in zip(parts, ranks, strict=True):
            weight = sum(u.scale for u in uses if u.sha256 == sha)
            scale[i, col:col + r] = weight * d.factor
            col += r
    return a, b.to(device, dtype), scale.to(device, dtype)
