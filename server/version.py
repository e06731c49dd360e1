"""darkroom's version: the installed package's metadata (pyproject.toml holds the one number)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("darkroom")
except PackageNotFoundError:  # run from a checkout without `pip install -e .`
    __version__ = "0.0.0+unknown"
