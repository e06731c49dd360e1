"""Family name -> Family class. Names are the `family` values in configs/models.toml."""

from __future__ import annotations

from pipelines.base import Family
from pipelines.flux2 import Flux2DevFamily, Flux2KleinFamily
from pipelines.flux_kontext import FluxKontextFamily
from pipelines.ltx2 import LTX2Family
from pipelines.qwen_image_edit import QwenImageEditFamily
from pipelines.sdxl import SDXLFamily
from pipelines.wan import WanI2VA14BFamily, WanTI2V5BFamily

FAMILIES: dict[str, type[Family]] = {
    cls.name: cls
    for cls in (FluxKontextFamily, Flux2KleinFamily, Flux2DevFamily, QwenImageEditFamily, SDXLFamily, WanTI2V5BFamily,
                WanI2VA14BFamily, LTX2Family)
}


def family_class(name: str) -> type[Family]:
    """The Family class for `name`; KeyError lists the known names."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
