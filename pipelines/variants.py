"""Weight variants: the precisions a weights entry can run at, what each needs of a device, and what it costs in
bytes and quality. Plain data, no torch: the planner (server/engine/variant_plan.py), the simulator, `doctor` and
the loader (pipelines/quantize.py) all read the same table.

A variant is either made at load from the bf16 files (torchao, bitsandbytes) or read from its own files (GGUF,
Nunchaku's pre-quantized checkpoints), pulled with `darkroom weights pull NAME --variant V`. Denoisers and text
encoders both change; VAEs, image encoders and embeddings stay at the serving dtype (small, and the VAE is where
quantization shows first).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

QUALITY_FLOORS = ("4bit", "5bit", "8bit", "bf16")
"""Quality classes, lowest first. An id's floor is the lowest class it may run at (configs/acceleration.toml)."""


@dataclass(frozen=True)
class Variant:
    """One precision recipe for a weights entry's denoisers and text encoders."""

    name: str
    summary: str
    quality: str
    """The class in QUALITY_FLOORS this variant meets."""
    denoiser_bits: float
    """Bits per quantized denoiser weight, scales included (what the memory model counts)."""
    encoder_bits: float
    """Bits per quantized text-encoder weight (16: the encoders stay at the serving dtype)."""
    backend: str
    """none | torchao | bitsandbytes | gguf | nunchaku: the package that does the work."""
    packages: tuple[str, ...] = ()
    """Python packages the variant needs at load."""
    from_files: bool = False
    """Read from its own files (pulled with --variant) rather than quantized at load from the bf16 files."""
    cuda_only: bool = False
    min_capability: tuple[int, int] | None = None
    capabilities: frozenset[tuple[int, int]] | None = None
    """When set: the only compute capabilities its kernels are built for."""
    gguf_type: str | None = None
    """The GGML quantization type of a GGUF variant's files."""

    def bits_for(self, kind: str) -> float:
        """Bits per weight of a component of `kind` (denoiser, encoder, other) under this variant."""
        if kind == "denoiser":
            return self.denoiser_bits
        if kind == "encoder":
            return self.encoder_bits
        return 16.0


_8BIT_SCALED = 8.25  # one bf16 scale per row of a few thousand weights
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("bf16", "the published weights at the serving dtype", "bf16", 16.0, 16.0, "none"),
    Variant("fp8_dynamic", "fp8 weights and activations, per-row scales (torchao): fp8 tensor-core matmuls",
            "8bit", _8BIT_SCALED, _8BIT_SCALED, "torchao", ("torchao",), cuda_only=True, min_capability=(8, 9)),
    Variant("fp8_weight", "fp8 weights, bf16 matmuls (torchao): half the bytes, about bf16 speed", "8bit",
            _8BIT_SCALED, _8BIT_SCALED, "torchao", ("torchao",), cuda_only=True, min_capability=(8, 9)),
    Variant("int8_weight", "int8 weights, bf16 matmuls (torchao): half the bytes on any GPU (and on a CPU)",
            "8bit", _8BIT_SCALED, _8BIT_SCALED, "torchao", ("torchao",)),
    Variant("nf4", "4-bit NormalFloat weights (bitsandbytes), bf16 matmuls", "4bit", 4.5, 4.5, "bitsandbytes",
            ("bitsandbytes",), cuda_only=True),
    Variant("gguf_q8_0", "GGUF Q8_0 denoiser files; int8 text encoders", "8bit", 8.5, _8BIT_SCALED, "gguf",
            ("gguf", "torchao"), from_files=True, gguf_type="Q8_0"),
    Variant("gguf_q5_k", "GGUF Q5_K denoiser files; int8 text encoders", "5bit", 5.5, _8BIT_SCALED, "gguf",
            ("gguf", "torchao"), from_files=True, gguf_type="Q5_K"),
    Variant("gguf_q4_k", "GGUF Q4_K denoiser files; int8 text encoders", "4bit", 4.5, _8BIT_SCALED, "gguf",
            ("gguf", "torchao"), from_files=True, gguf_type="Q4_K"),
    # Nunchaku builds its kernels for Turing, Ampere, Ada and Blackwell only: "Hopper does not have 4-bit tensor
    # cores" (nunchaku #381), so these are never offered on an H100/H200.
    Variant("svdq_int4", "SVDQuant int4 weights and activations with a low-rank branch (Nunchaku)", "4bit", 4.75,
            _8BIT_SCALED, "nunchaku", ("nunchaku", "torchao"), from_files=True, cuda_only=True,
            capabilities=frozenset({(7, 5), (8, 0), (8, 6), (8, 9), (12, 0)})),
    Variant("nvfp4", "SVDQuant NVFP4 weights and activations (Nunchaku, Blackwell's fp4 tensor cores)", "4bit", 4.75,
            _8BIT_SCALED, "nunchaku", ("nunchaku", "torchao"), from_files=True, cuda_only=True,
            capabilities=frozenset({(10, 0), (12, 0)})),
)}


def variant(name: str) -> Variant:
    """The variant called `name`; ValueError listing the valid names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown weight variant {name!r}; use one of {', '.join(VARIANTS)}") from None


def meets_floor(v: Variant, floor: str) -> bool:
    """Whether `v` is at or above the quality class `floor`."""
    return QUALITY_FLOORS.index(v.quality) >= QUALITY_FLOORS.index(floor)


def strictest(floors: Collection[str]) -> str:
    """The highest of several floors (ids sharing weights load them once, at the strictest floor among them)."""
    return max(floors, key=QUALITY_FLOORS.index) if floors else "8bit"


def why_not_on(v: Variant, capability: tuple[int, int] | None, installed: Collection[str] | None = None,
               files_present: bool = True) -> str | None:
    """Why `v` cannot run on a device of `capability` (None: a CPU) with `installed` packages (None: assume the
    device's install has them, as on a card profile), or None when it can."""
    if v.cuda_only and capability is None:
        return f"{v.name} needs an NVIDIA GPU ({v.backend} has no CPU kernels for it)"
    if capability is not None and v.min_capability and capability < v.min_capability:
        return (f"{v.name} needs compute capability >= {v.min_capability[0]}.{v.min_capability[1]}; this GPU is "
                f"{capability[0]}.{capability[1]}" + (" (no fp8 tensor cores)" if v.min_capability == (8, 9) else ""))
    if capability is not None and v.capabilities is not None and capability not in v.capabilities:
        return (f"{v.name}: {v.backend}'s kernels are built for compute capabilities "
                f"{', '.join(f'{a}.{b}' for a, b in sorted(v.capabilities))}; this GPU is "
                f"{capability[0]}.{capability[1]}")
    if installed is not None:
        missing = [p for p in v.packages if p not in installed and not (p == "torchao" and v.backend == "gguf")]
        if missing:
            extra = "quant-cuda" if "bitsandbytes" in missing else "quant"
            return f"{v.name} needs {', '.join(missing)} (pip install -e '.[{extra}]')"
    if v.from_files and not files_present:
        return f"{v.name} is read from its own files, which are not here (darkroom weights pull --variant {v.name})"
    return None
