"""What a LoRA file is, read from its safetensors header alone: no tensor is loaded and nothing is unpickled.

The HTTP side uses this when an adapter arrives (upload, mounted folder, URL): it refuses pickle checkpoints and
truncated or malformed files before anything else looks at them, tells which layout the keys are in (diffusers/PEFT,
kohya, xlabs, ComfyUI) and which model family the adapter was trained for, by matching the layers it targets (names
and shapes) against the families' own weights headers. The worker converts the tensors later
(pipelines/lora_runtime.py); nothing here imports torch.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
"""File names that say "pickle": refused by name before a byte is read."""
_MAX_HEADER = 16 * 1024 * 1024
_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
           "I8": 1, "U8": 1, "BOOL": 1}
# Encoders' layers: diffusers' text_encoder prefixes and kohya's lora_te*_ ones.
_ENCODER_PREFIXES = ("text_encoder", "lora_te", "te_", "text_model")
_SGM_BLOCKS = ("input_blocks", "output_blocks", "middle_block")
_BFL_BLOCKS = ("double_blocks", "single_blocks")


class LoraFormatError(ValueError):
    """A LoRA file that cannot be used; `code` is the stable API error code and `message` says what to change."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TargetLayer:
    """One layer an adapter changes: its input and output features and the adapter's rank there."""

    in_features: int
    out_features: int
    rank: int


@dataclass(frozen=True)
class LoraHeader:
    """A LoRA file as its header describes it."""

    layout: str
    """'diffusers' (PEFT lora_A/lora_B), 'diffusers-old' (lora.down/up), 'kohya', 'kohya-sgm', 'kohya-bfl',
    'xlabs' or 'comfy'."""
    prefixes: frozenset[str]
    """Which pipeline component each layer belongs to ('transformer', 'unet', 'transformer_2'; '' when the keys
    carry none)."""
    layers: Mapping[str, TargetLayer]
    """Denoiser layers by their module path (diffusers names where the layout uses them, else the file's own)."""
    encoder_layers: int = 0
    """Layers on a text encoder: not applied (darkroom adapts the denoiser), counted so the record can say so."""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The largest rank of any layer."""
        return max((t.rank for t in self.layers.values()), default=0)

    @property
    def named_like_diffusers(self) -> bool:
        """Whether layer names are diffusers module paths (so shapes can be checked against weights headers)."""
        return self.layout in ("diffusers", "diffusers-old")


def refuse_pickle_name(name: str) -> None:
    """422 for a file name that says it is a pickle checkpoint."""
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise LoraFormatError("unsupported_format", f"{Path(name).name!r} is a pickle checkpoint; darkroom loads "
                              "safetensors only (convert it, e.g. with `safetensors.torch.save_file`)")


def read_header(data: bytes) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, after checking it is one and is complete."""
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise LoraFormatError("unsupported_format", "this file is a pickle checkpoint (a zip or pickle stream), "
                              "not safetensors; darkroom never unpickles a checkpoint: convert it to safetensors")
    if len(data) < 10:
        raise LoraFormatError("invalid_lora", "the file is too short to be safetensors")
    (length,) = struct.unpack("<Q", data[:8])
    if length > _MAX_HEADER or 8 + length > len(data):
        raise LoraFormatError("invalid_lora", "the file is not a complete safetensors file (bad header length: "
                              "truncated or not safetensors)")
    try:
        header = json.loads(data[8:8 + length])
    except (UnicodeDecodeError, ValueError):
        raise LoraFormatError("invalid_lora", "the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise LoraFormatError("invalid_lora", "the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    body = len(data) - 8 - length
    end = 0
    for name, info in header.items():
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
            raise LoraFormatError("invalid_lora", f"tensor {name[:120]!r} has no supported dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2):
            raise LoraFormatError("invalid_lora", f"tensor {name[:120]!r} has a malformed entry")
        count = 1
        for d in shape:
            count *= d
        start, stop = offsets
        if not (isinstance(start, int) and isinstance(stop, int)) or stop - start != count * _DTYPES[info["dtype"]] \
                or start < 0 or stop > body:
            raise LoraFormatError("invalid_lora", "the file is truncated or its tensor offsets are wrong "
                                  f"(tensor {name[:120]!r})")
        end = max(end, stop)
    if end != body:
        raise LoraFormatError("invalid_lora", "the file's size does not match its header (truncated or padded)")
    if not header:
        raise LoraFormatError("invalid_lora", "the file holds no tensors")
    return header, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


_PEFT = re.compile(r"^(?:(?P<prefix>[a-z_0-9]+?)\.)?(?P<module>.+)\.lora_(?P<kind>A|B)(?:\.[^.]+)?\.weight$")
_OLD = re.compile(r"^(?:(?P<prefix>[a-z_0-9]+?)\.)?(?P<module>.+)\.lora\.(?P<kind>down|up)\.weight$")
_KOHYA = re.compile(r"^(?P<prefix>lora_(?:unet|te\d?|transformer))_(?P<module>.+)\.lora_(?P<kind>down|up)\.weight$")
_XLABS = re.compile(r"^(?P<module>(?:double|single)_blocks\.\d+\.processor\.[a-z_0-9]+)\.(?P<kind>down|up)\.weight$")
_COMFY = re.compile(r"^diffusion_model\.(?P<module>.+)\.lora_(?P<kind>A|B|down|up)\.weight$")
_COMPONENTS = ("transformer_2", "transformer", "unet")


def _split_prefix(prefix: str | None, module: str) -> tuple[str, str]:
    """(component, module path): keys without a known component prefix keep their whole path."""
    if prefix in _COMPONENTS:
        return prefix, module
    if prefix is None:
        return "", module
    if prefix.startswith(_ENCODER_PREFIXES):
        return prefix, module
    return "", f"{prefix}.{module}"


def inspect(data: bytes) -> LoraHeader:
    """The file's layout, components and target layers (422-style LoraFormatError when it is not a LoRA)."""
    tensors, metadata = read_header(data)
    shapes = {k: v["shape"] for k, v in tensors.items()}
    down: dict[tuple[str, str], list[int]] = {}
    up: dict[tuple[str, str], list[int]] = {}
    layouts: set[str] = set()
    encoder = 0
    for key, shape in shapes.items():
        if key.endswith((".alpha", ".lora_alpha", ".diff", ".diff_b")):
            continue
        matched = _match_key(key)
        if matched is None:
            continue
        layout, component, module, is_down = matched
        layouts.add(layout)
        if component.startswith(_ENCODER_PREFIXES):
            encoder += is_down
            continue
        (down if is_down else up)[(component, module)] = shape  # type: ignore[assignment]
    if not down:
        raise LoraFormatError("invalid_lora", "no LoRA layers found: expected lora_A/lora_B (diffusers, PEFT), "
                              "lora_down/lora_up (kohya) or xlabs keys" + (
                                  "; this adapter changes only the text encoder, which darkroom does not adapt"
                                  if encoder else ""))
    layers: dict[str, TargetLayer] = {}
    prefixes: set[str] = set()
    for (component, module), d in down.items():
        u = up.get((component, module))
        if u is None or len(d) < 2 or len(u) < 2 or u[1] != d[0]:
            raise LoraFormatError("invalid_lora", f"layer {module[:120]!r} has no matching up/down pair of ranks")
        if len(d) != 2:
            raise LoraFormatError("unsupported_format", f"layer {module[:120]!r} is a convolution LoRA (LoCon); "
                                  "darkroom applies adapters to linear layers only")
        prefixes.add(component)
        layers[f"{component}.{module}" if component in ("transformer_2",) else module] = TargetLayer(d[1], u[0], d[0])
    layout = _one_layout(layouts, layers)
    return LoraHeader(layout, frozenset(prefixes), layers, encoder, metadata)


def _match_key(key: str) -> tuple[str, str, str, bool] | None:
    """(layout, component, module, is_down) of one tensor key, None for keys that are not LoRA halves."""
    if m := _COMFY.match(key):
        return "comfy", "", m["module"], m["kind"] in ("A", "down")
    if m := _KOHYA.match(key):
        component = "unet" if m["prefix"] in ("lora_unet", "lora_transformer") else m["prefix"]
        return "kohya", component, m["module"], m["kind"] == "down"
    if m := _XLABS.match(key):
        return "xlabs", "", m["module"], m["kind"] == "down"
    if m := _PEFT.match(key):
        component, module = _split_prefix(m["prefix"], m["module"])
        return "diffusers", component, module, m["kind"] == "A"
    if m := _OLD.match(key):
        component, module = _split_prefix(m["prefix"], m["module"])
        return "diffusers-old", component, module, m["kind"] == "down"
    return None


def _one_layout(layouts: set[str], layers: Iterable[str]) -> str:
    if len(layouts) > 1:
        raise LoraFormatError("invalid_lora", f"the file mixes key layouts ({', '.join(sorted(layouts))})")
    layout = layouts.pop()
    if layout == "kohya":
        names = list(layers)
        if any(n.startswith(_SGM_BLOCKS) for n in names):
            return "kohya-sgm"
        if any(n.startswith(_BFL_BLOCKS) for n in names):
            return "kohya-bfl"
    return layout


def flatten(module: str) -> str:
    """A module path as kohya writes it (dots to underscores)."""
    return module.replace(".", "_")


@dataclass(frozen=True)
class FamilyLayers:
    """A family's adaptable layers, from its denoisers' weights headers: module path -> (out, in)."""

    family: str
    layers: Mapping[str, tuple[int, int]]
    vocabulary: frozenset[str] = frozenset()
    """Community layouts this family's diffusers loader converts (kohya-sgm, kohya-bfl, xlabs, comfy)."""

    def resolve(self, header: LoraHeader) -> dict[str, str]:
        """The adapter's layers as this family's module paths (kohya names unflattened); empty when the layout
        names layers the family's loader converts rather than its own paths."""
        if header.layout == "kohya":
            flat = {flatten(name): name for name in self.layers}
            return {layer: flat.get(layer, layer) for layer in header.layers}
        if header.named_like_diffusers:
            return {layer: layer for layer in header.layers}
        return {}

    def misfits(self, header: LoraHeader) -> list[str]:
        """Why the adapter does not fit this family's weights (empty: it fits)."""
        if header.layout in ("kohya-sgm", "kohya-bfl", "xlabs", "comfy"):
            return [] if header.layout in self.vocabulary else [f"{header.layout} keys are not {self.family}'s"]
        out = []
        for layer, path in self.resolve(header).items():
            target = header.layers[layer]
            shape = self.layers.get(path)
            if shape is None:
                out.append(f"{path} is not a linear layer of {self.family}")
            elif shape != (target.out_features, target.in_features):
                out.append(f"{path} is {shape[1]}->{shape[0]} in {self.family}, the adapter's is "
                           f"{target.in_features}->{target.out_features}")
            if len(out) >= 3:
                break
        return out


def denoiser_layers(family: str, weights_dir: Path, denoisers: Iterable[str],
                    vocabulary: Iterable[str] = ()) -> FamilyLayers:
    """Read a weights folder's denoiser headers: every 2-D `<module>.weight` is a linear layer a LoRA may target.
    A second denoiser (Wan's transformer_2) is keyed with its component prefix."""
    layers: dict[str, tuple[int, int]] = {}
    for index, name in enumerate(denoisers):
        for path in sorted((weights_dir / name).glob("*.safetensors")):
            with path.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
            for key, info in header.items():
                if key.endswith(".weight") and isinstance(info, dict) and len(info.get("shape", ())) == 2:
                    module = key.removesuffix(".weight")
                    layers[module if index == 0 else f"{name}.{module}"] = (info["shape"][0], info["shape"][1])
    return FamilyLayers(family, layers, frozenset(vocabulary))

