"""darkroom's configuration files, shipped with the package: models, provider names, acceleration, costs, memory
coefficients, prices and the weights manifest. `server/config.py` reads them, once, from a config dir (this
folder by default, or a copy an operator points DARKROOM_CONFIG_DIR at)."""

from __future__ import annotations

from pathlib import Path


def packaged_dir() -> Path:
    """The config dir shipped with the package (the default of DARKROOM_CONFIG_DIR)."""
    return Path(__file__).resolve().parent
