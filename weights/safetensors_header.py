"""Weight sizes read from safetensors headers, without loading a tensor."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}
_MAX_HEADER = 100 * 1024 * 1024


def tensor_shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Map tensor name -> (dtype, shape) from one .safetensors file's header."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > _MAX_HEADER:
            raise ValueError(f"{path.name}: safetensors header of {length} bytes is not plausible")
        header = json.loads(fh.read(length))
    return {name: (info["dtype"], tuple(info["shape"])) for name, info in header.items() if name != "__metadata__"}


def tensor_sizes(path: Path) -> dict[str, tuple[str, int]]:
    """Map tensor name -> (dtype, element count) from one .safetensors file's header."""
    return {name: (dtype, math.prod(shape)) for name, (dtype, shape) in tensor_shapes(path).items()}


def folder_parameter_count(folder: Path) -> int:
    """Total number of weight elements in every .safetensors file of a component folder."""
    return sum(count for f in sorted(folder.glob("*.safetensors")) for _, count in tensor_sizes(f).values())


def folder_bytes_at(folder: Path, bytes_per_element: int | None = None) -> int:
    """Bytes the component occupies once loaded: at its stored dtypes, or cast to `bytes_per_element`."""
    return sum(file_bytes_at(f, bytes_per_element) for f in sorted(folder.glob("*.safetensors")))


def file_bytes_at(path: Path, bytes_per_element: int | None = None) -> int:
    """Bytes one .safetensors file's tensors occupy once loaded (stored dtypes, or `bytes_per_element`)."""
    return sum(count * (bytes_per_element or _DTYPE_BYTES[dtype]) for dtype, count in tensor_sizes(path).values())
