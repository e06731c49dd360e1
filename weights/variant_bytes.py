"""A component's bytes under a weight variant, read from file headers (safetensors, GGUF), never guessed.

Variants quantized at load change the linear layers' weights only (what torchao's and bitsandbytes' default
filters touch): 2-D `.weight` tensors, embedding tables excepted. A GGUF file is counted tensor by tensor as stored
(block-quantized tensors at their block bytes, the float ones cast to the serving dtype as the loader casts them).
"""

from __future__ import annotations

import math
from pathlib import Path

from weights.safetensors_header import tensor_shapes

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1}


_EMBEDDING_TABLES = ("shared", "embed_tokens", "wte", "wpe")


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether a tensor is a linear layer's weight (what at-load quantization replaces): 2-D, `.weight`, and not an
    embedding table (T5's `shared`, `embed_tokens`, CLIP's `token_embedding`; diffusers' `x_embedder` and
    `timestep_embedder.linear_1` are linear layers)."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    module = name.rsplit(".", 2)[-2] if "." in name else ""
    return module not in _EMBEDDING_TABLES and not module.endswith(("embedding", "embeddings"))


def folder_bytes_under(folder: Path, bits: float, dtype_bytes: int) -> int:
    """Bytes a component folder's safetensors occupy with linear weights at `bits` per weight and every other
    tensor at `dtype_bytes` per element (bits 16 with dtype_bytes 2: plain bf16)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        for name, (_dtype, shape) in tensor_shapes(path).items():
            count = math.prod(shape)
            total += math.ceil(count * bits / 8) if bits < 16 and quantizable(name, shape) else count * dtype_bytes
    return total


def gguf_bytes(path: Path, dtype_bytes: int) -> int:
    """Bytes a GGUF component occupies once loaded: quantized tensors as stored, float ones at `dtype_bytes`."""
    from gguf import GGMLQuantizationType, GGUFReader

    floats = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
              GGMLQuantizationType.F64}
    reader = GGUFReader(path)
    return sum(int(t.n_elements) * dtype_bytes if t.tensor_type in floats else int(t.n_bytes)
               for t in reader.tensors)
