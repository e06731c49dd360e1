"""Build the tiny random-weight demo set: every manifest entry, with its family's real classes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from weights.manifest import WeightsEntry


# Builders import diffusers when called, not when this module is imported.
def _flux_kontext(out: Path) -> Path:
    from weights.tiny.flux_kontext import build_flux_kontext

    return build_flux_kontext(out)


def _flux2_klein(out: Path) -> Path:
    from weights.tiny.flux2 import build_flux2_klein

    return build_flux2_klein(out)


def _qwen_image_edit(out: Path) -> Path:
    from weights.tiny.qwen_image import build_qwen_image_edit

    return build_qwen_image_edit(out)


def _sdxl(out: Path) -> Path:
    from weights.tiny.sdxl import build_sdxl

    return build_sdxl(out)


def _wan_ti2v(out: Path) -> Path:
    from weights.tiny.wan import build_wan_ti2v_5b

    return build_wan_ti2v_5b(out)


def _wan_a14b(out: Path) -> Path:
    from weights.tiny.wan import build_wan_i2v_a14b

    return build_wan_i2v_a14b(out)


def _ltx2(out: Path) -> Path:
    from weights.tiny.ltx2 import build_ltx2

    return build_ltx2(out)


TINY_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "flux-kontext": _flux_kontext,
    "flux2-klein": _flux2_klein,
    "qwen-image-edit": _qwen_image_edit,
    "sdxl": _sdxl,
    "wan2.2-ti2v-5b": _wan_ti2v,
    "wan2.2-i2v-a14b": _wan_a14b,
    "ltx2": _ltx2,
}


def build_demo(entry: WeightsEntry, demo_dir: Path, force: bool = False) -> Path:
    """Build one entry's tiny pipeline under `demo_dir/<name>` atomically; reuse it when already there."""
    target = demo_dir / entry.name
    if (target / "model_index.json").is_file() and not force:
        return target
    builder = TINY_BUILDERS[entry.family]
    demo_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash never leaves a half-written model that looks ready.
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=demo_dir))
    try:
        builder(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_all(entries: dict[str, WeightsEntry], demo_dir: Path, force: bool = False) -> list[Path]:
    """Build every entry's demo weights."""
    return [build_demo(e, demo_dir, force) for e in entries.values()]
