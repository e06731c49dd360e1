"""Activation-memory coefficients per family, from configs/memory.toml (see its header for the formula)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MEMORY_PATH = Path(__file__).resolve().parents[1] / "configs" / "memory.toml"


@dataclass(frozen=True)
class MemoryCoefficients:
    """One family's activation coefficients (bytes)."""

    bytes_per_token: int
    vae_bytes_per_pixel: int = 0
    vae_bytes_per_voxel: int = 0
    text_tokens: int = 0


@cache
def _table(path: Path) -> dict[str, MemoryCoefficients]:
    return {name: MemoryCoefficients(**body) for name, body in tomllib.loads(path.read_text()).items()}


def load_memory_table(path: Path = MEMORY_PATH) -> dict[str, MemoryCoefficients]:
    """Every family's coefficients in `path` (a deployment's own configs/memory.toml)."""
    return dict(_table(path))


def coefficients(family: str, path: Path = MEMORY_PATH) -> MemoryCoefficients:
    """The coefficients of `family` (a static file, read once per path); KeyError names the file."""
    try:
        return _table(path)[family]
    except KeyError:
        raise KeyError(f"no activation coefficients for {family!r} in {path.name}") from None
