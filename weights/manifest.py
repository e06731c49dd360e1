"""The manifest of real checkpoints (manifest.toml in the config dir), typed."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipelines.variants import VARIANTS

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class AddonEntry(BaseModel):
    """Weights from another hub repo that a family loads on top of an entry (e.g. an IP-Adapter).

    They are pulled into `<entry dir>/<folder>/` so one folder holds everything a family loads.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field(pattern=r"^[a-z0-9_]+$")
    repo: str
    revision: str
    license: str
    license_url: str
    commercial_use: bool
    allow_patterns: list[str] = Field(min_length=1)
    files: list[str] = Field(min_length=1)
    """Paths (under `folder`) that must be present after a pull; `.safetensors` ones are header-checked."""


class VariantFiles(BaseModel):
    """A weights entry's variant that is read from its own files (GGUF, pre-quantized checkpoints): pulled with
    `darkroom weights pull NAME --variant V` into `<entry dir>/variants/<V>/`, beside the entry's other files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str
    revision: str
    files: dict[str, str] = Field(min_length=1)
    """Component (a folder of the entry, e.g. transformer) -> the file in `repo` that replaces its weights."""
    license: str | None = None
    """When the quantizer's repo states its own licence; else the entry's applies."""

    def local_path(self, entry_dir: Path, variant: str, component: str) -> Path:
        """Where the pulled file of `component` lives."""
        return entry_dir / VARIANTS_FOLDER / variant / self.files[component]


VARIANTS_FOLDER = "variants"


class WeightsEntry(BaseModel):
    """One downloadable set of weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: str
    repo: str
    revision: str
    license: str
    license_url: str
    commercial_use: bool
    gated: bool = False
    allow_patterns: list[str] = Field(min_length=1)
    addons: list[AddonEntry] = []
    variants: dict[str, VariantFiles] = {}
    """Variants read from their own files (pipelines/variants.py names them); variants quantized at load from
    these files need no entry."""

    @property
    def all_commercial(self) -> bool:
        """Whether the entry and every add-on may be used commercially."""
        return self.commercial_use and all(a.commercial_use for a in self.addons)

    @property
    def revision_pinned(self) -> bool:
        """True when `revision` is a full commit hash rather than a branch name."""
        return len(self.revision) == 40 and all(c in "0123456789abcdef" for c in self.revision)


def load_manifest(path: Path) -> dict[str, WeightsEntry]:
    """Parse and validate the manifest; every pattern must fetch safetensors or small text files only."""
    raw = tomllib.loads(path.read_text())
    entries = {name: WeightsEntry(name=name, **body) for name, body in raw.get("weights", {}).items()}
    for entry in entries.values():
        for pattern in [*entry.allow_patterns, *(p for a in entry.addons for p in a.allow_patterns)]:
            if pattern.endswith(PICKLE_SUFFIXES) or pattern in ("*", "**"):
                raise ValueError(f"{entry.name}: pattern {pattern!r} could fetch pickled weights")
        for name, files in entry.variants.items():
            known = VARIANTS.get(name)
            if known is None or not known.from_files:
                raise ValueError(f"{entry.name}: variants.{name} is not a variant read from files; use one of "
                                 f"{', '.join(n for n, v in VARIANTS.items() if v.from_files)}")
            bad = [f for f in files.files.values() if not f.endswith((".gguf", ".safetensors"))]
            if bad:
                raise ValueError(f"{entry.name}: variants.{name} names {bad}; only .gguf and .safetensors files")
    return entries
