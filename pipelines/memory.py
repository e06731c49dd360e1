"""Activation-memory coefficients per family, from memory.toml in the config dir (see its header for the formula).
The server reads them once (server/config.py) and passes each family its own."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MemoryCoefficients:
    """One family's activation coefficients (bytes)."""

    bytes_per_token: int
    vae_bytes_per_pixel: int = 0
    vae_bytes_per_voxel: int = 0
    text_tokens: int = 0


def load_memory_table(path: Path) -> dict[str, MemoryCoefficients]:
    """Every family's coefficients in `path` (the config dir's memory.toml)."""
    return {name: MemoryCoefficients(**body) for name, body in tomllib.loads(path.read_text()).items()}
