"""Loading a family's weights at a weight variant (pipelines/variants.py), and counting what they then occupy.

`choose_variant` walks the planner's order for this device: the first variant whose packages, kernels and files
are here wins, each one passed over is recorded with its reason, and a pinned variant that cannot run refuses
(AccelerationRefused: the job fails `unsupported_feature`). `load_arguments` turns the choice into diffusers'
own loading arguments: a `PipelineQuantizationConfig` for variants quantized at load (torchao, bitsandbytes), and
denoisers read with `from_single_file` + `GGUFQuantizationConfig` (or Nunchaku's classes) for variants with files.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.acceleration import AccelerationRefused, capability_of
from pipelines.variants import VARIANTS, Variant, why_not_on

if TYPE_CHECKING:
    import torch

OPTIONAL_PACKAGES = ("torchao", "bitsandbytes", "gguf", "nunchaku")

# Nunchaku's transformer classes per diffusers denoiser class (the checkpoints it publishes are for these).
_NUNCHAKU_CLASSES = {"FluxTransformer2DModel": "NunchakuFluxTransformer2dModel",
                     "QwenImageTransformer2DModel": "NunchakuQwenImageTransformer2DModel"}


def installed_packages() -> frozenset[str]:
    """The optional quantization packages importable in this process."""
    return frozenset(p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)


@dataclass
class VariantChoice:
    """The variant a load runs at, and why the ones before it in the order were passed over."""

    variant: Variant
    order: tuple[str, ...]
    pinned: bool
    passed_over: list[str] = field(default_factory=list)
    components: dict[str, str] = field(default_factory=dict)
    """Component -> what it runs at (a variant's encoders may stay at the serving dtype, with the reason)."""
    notes: list[str] = field(default_factory=list)

    def record(self, weight_bytes: int | None = None) -> dict[str, Any]:
        """JSON for the job's runtime record (runtime.acceleration.quantization)."""
        return {"variant": self.variant.name, "requested": self.order[0] if self.pinned else "auto",
                "pinned": self.pinned, "order": list(self.order), "passed_over": self.passed_over,
                "components": self.components, "notes": self.notes, "weight_bytes": weight_bytes}


def choose_variant(order: tuple[str, ...], pinned: bool, device: str, model_dir: Path,
                   supported: frozenset[str] | None = None,
                   unsupported_why: str = "this family's loader does not read it") -> VariantChoice:
    """The first variant of `order` that can load on `device` from `model_dir`; bf16 when none can (unless
    pinned: AccelerationRefused with the reason). `supported`: the variants the family's loader handles (the
    others are passed over with `unsupported_why`)."""
    from weights.locate import variant_files

    capability = capability_of(device)
    installed = installed_packages()
    passed: list[str] = []
    for name in order or ("bf16",):
        v = VARIANTS[name]
        why = None
        if supported is not None and name not in supported:
            why = f"{name}: {unsupported_why}"
        why = why or why_not_on(v, capability, installed,
                                files_present=not v.from_files or bool(variant_files(model_dir, name)))
        if why is None:
            return VariantChoice(v, order, pinned, passed)
        if pinned:
            raise AccelerationRefused(why)
        passed.append(why)
    return VariantChoice(VARIANTS["bf16"], order, pinned, passed)


def _torchao_config(variant: str, role: str) -> Any:
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    if variant == "fp8_dynamic" and role == "denoiser":
        from pipelines.acceleration import fp8_config

        return fp8_config()
    if variant in ("fp8_dynamic", "fp8_weight"):
        return Float8WeightOnlyConfig()
    return Int8WeightOnlyConfig()


def _config_for(choice: VariantChoice, library: str, role: str, dtype: torch.dtype) -> Any | None:
    """diffusers' or transformers' quantization config for one component, or None to leave it as it is."""
    v = choice.variant
    if v.backend == "bitsandbytes":
        import diffusers
        import transformers

        cls = diffusers.BitsAndBytesConfig if library == "diffusers" else transformers.BitsAndBytesConfig
        return cls(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    torchao_variant = v.name if v.backend == "torchao" else "int8_weight"  # from-files variants: int8 encoders
    if v.backend != "torchao" and role == "denoiser":
        return None  # read from the variant's files instead
    if importlib.util.find_spec("torchao") is None:
        choice.notes.append(f"{role}s stay at the serving dtype: torchao is not installed")
        return None
    import diffusers
    import transformers

    cls = diffusers.TorchAoConfig if library == "diffusers" else transformers.TorchAoConfig
    return cls(_torchao_config(torchao_variant, role))


def load_arguments(choice: VariantChoice, model_dir: Path, denoisers: tuple[str, ...], dtype: torch.dtype
                   ) -> dict[str, Any]:
    """Extra `from_pretrained` arguments that load `model_dir` at `choice` (fills `choice.components`)."""
    from weights.locate import variant_files

    v = choice.variant
    index = json.loads((model_dir / "model_index.json").read_text())
    present = {name: spec for name, spec in index.items()
               if not name.startswith("_") and isinstance(spec, list) and spec[1] is not None}
    if v.name == "bf16":
        return {}
    kwargs: dict[str, Any] = {}
    mapping: dict[str, Any] = {}
    files = variant_files(model_dir, v.name) if v.from_files else {}
    for name, (library, class_name) in present.items():
        role = "denoiser" if name in denoisers else "encoder" if name.startswith("text_encoder") else None
        if role is None:
            continue
        if role == "denoiser" and v.from_files:
            if name in files:
                kwargs[name] = _denoiser_from_file(v, library, class_name, files[name], model_dir, name, dtype)
                choice.components[name] = v.name
            else:
                choice.notes.append(f"{name} stays at the serving dtype: the variant's files do not include it")
            continue
        config = _config_for(choice, library, role, dtype)
        if config is not None:
            mapping[name] = config
            choice.components[name] = v.name if v.backend != "gguf" else "int8_weight"
    if mapping:
        from diffusers.quantizers import PipelineQuantizationConfig

        kwargs["quantization_config"] = PipelineQuantizationConfig(quant_mapping=mapping)
    return kwargs


def _denoiser_from_file(v: Variant, library: str, class_name: str, path: Path, model_dir: Path, name: str,
                        dtype: torch.dtype) -> Any:
    if v.backend == "nunchaku":
        import nunchaku  # type: ignore[import-not-found]

        cls = getattr(nunchaku, _NUNCHAKU_CLASSES[class_name])
        return cls.from_pretrained(str(path), torch_dtype=dtype)
    import diffusers
    from diffusers import GGUFQuantizationConfig

    cls = getattr(diffusers, class_name)
    return cls.from_single_file(str(path), config=str(model_dir), subfolder=name, torch_dtype=dtype,
                                quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                local_files_only=True)


def supported_variants(denoiser_classes: tuple[str, ...]) -> frozenset[str]:
    """The variants a family whose denoisers have `denoiser_classes` can load (Nunchaku publishes FLUX.1 and
    Qwen-Image transformers only)."""
    names = {n for n, v in VARIANTS.items() if v.backend != "nunchaku"}
    if denoiser_classes and all(c in _NUNCHAKU_CLASSES for c in denoiser_classes):
        names |= {n for n, v in VARIANTS.items() if v.backend == "nunchaku"}
    return frozenset(names)


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes a module's parameters and buffers occupy, counting a quantized tensor subclass (torchao) by its inner
    tensors rather than the dtype it reports."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: Any) -> int:
    import torch

    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ctx = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, n)) for n in names)
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    return int(data.numel() * data.element_size())
