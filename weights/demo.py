"""Build the tiny random-weight demo set: every manifest entry, with its family's real classes."""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from weights.demo_variants import build_demo_variants
from weights.locate import LocatedWeights, demo_weights_ready, locate
from weights.manifest import WeightsEntry


def tiny_builder(family: str) -> Callable[[Path], Path]:
    """The tiny builder of `family` (declared on its family class)."""
    from pipelines.registry import family_class

    module, _, func = family_class(family).tiny_builder.partition(":")
    return getattr(importlib.import_module(module), func)


def build_demo(entry: WeightsEntry, demo_dir: Path, force: bool = False) -> Path:
    """Build one entry's tiny pipeline under `demo_dir/<name>` atomically; reuse it when already there."""
    target = demo_dir / entry.name
    if demo_weights_ready(target, entry) and not force:
        return target
    builder = tiny_builder(entry.family)
    demo_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash never leaves a half-written model that looks ready.
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=demo_dir))
    try:
        builder(tmp)
        build_demo_variants(entry, tmp)
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


def locate_or_build(entry: WeightsEntry, weights_dir: Path, demo_dir: Path, demo_mode: str) -> LocatedWeights | None:
    """Real weights when present; else demo weights, built first when missing (unless demo_mode is never)."""
    where = locate(entry, weights_dir, demo_dir, demo_mode)
    if where is None and demo_mode != "never":
        logging.getLogger("darkroom").warning("building demo weights for %s (no real weights in %s)", entry.name,
                                              weights_dir)
        build_demo(entry, demo_dir)
        where = locate(entry, weights_dir, demo_dir, demo_mode)
    return where
