"""Family name -> Family class. Names are the `family` values in configs/models.toml."""

from __future__ import annotations

from pipelines.base import Family
from pipelines.flux_kontext import FluxKontextFamily
from pipelines.sdxl import SDXLFamily

FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in (FluxKontextFamily, SDXLFamily)}


def family_class(name: str) -> type[Family]:
    """The Family class for `name`; KeyError lists the known names."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
