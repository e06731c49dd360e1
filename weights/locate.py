"""Where each weights entry lives on disk, and whether it is real or demo."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from weights.manifest import VARIANTS_FOLDER, WeightsEntry

LOCK_FILE = ".darkroom-lock.json"


@dataclass(frozen=True)
class LocatedWeights:
    """A weights entry resolved to a directory to load from."""

    entry: WeightsEntry
    path: Path
    demo: bool


def real_weights_ready(path: Path) -> bool:
    """Pulled and verified: `darkroom weights pull` writes the lock file last."""
    return (path / "model_index.json").is_file() and (path / LOCK_FILE).is_file()


def demo_weights_ready(path: Path, entry: WeightsEntry) -> bool:
    """Built by `darkroom weights demo` (atomically), including the entry's add-ons and GGUF demo variants (older
    builds lack them)."""
    from weights.demo_variants import demo_variants_ready

    return (path / "model_index.json").is_file() and all(
        (path / a.folder / f).is_file() for a in entry.addons for f in a.files) and demo_variants_ready(path, entry)


def locate(entry: WeightsEntry, weights_dir: Path, demo_dir: Path, demo_mode: str) -> LocatedWeights | None:
    """Real weights when present (unless demo='always'); demo weights when allowed and built; else None."""
    real = weights_dir / entry.name
    if demo_mode != "always" and real_weights_ready(real):
        return LocatedWeights(entry, real, demo=False)
    demo = demo_dir / entry.name
    if demo_mode != "never" and demo_weights_ready(demo, entry):
        return LocatedWeights(entry, demo, demo=True)
    return None


def read_lock(path: Path) -> dict[str, object]:
    """The lock record of pulled weights (repo, commit, files)."""
    return json.loads((path / LOCK_FILE).read_text())


def variant_files(model_dir: Path, variant: str) -> dict[str, Path]:
    """The component files of a from-files variant under `model_dir` (its lock names them), or {} when it was
    not pulled (or built, for demo weights) here."""
    lock = model_dir / VARIANTS_FOLDER / variant / LOCK_FILE
    if not lock.is_file():
        return {}
    components = json.loads(lock.read_text()).get("components", {})
    paths = {name: lock.parent / rel for name, rel in components.items()}
    return paths if all(p.is_file() for p in paths.values()) else {}
