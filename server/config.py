"""One configuration object, read once from a config dir and passed, whole, to everything that needs it: the app,
the worker backends, `darkroom doctor`, Ray worker actors (serialised with their work, not copied field by field)
and the benchmarks.

It holds the weights manifest, the model catalog, the providers' model names, the acceleration profiles, the cost
table, the activation-memory coefficients, the price table, the GPU card profiles and the gang plans. Nothing else
in the code reads a file under configs/ or keeps a default path to one: a deployment's own config dir
(DARKROOM_CONFIG_DIR) changes all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from compare.prices import PriceTable
from pipelines.memory import MemoryCoefficients, load_memory_table
from server.acceleration_config import Acceleration
from server.catalog import Catalog
from server.dialects import ModelNames
from server.engine.costs import Costs, load_costs
from server.engine.gangs import ParallelSpec, load_parallel
from server.engine.variant_plan import CardProfile, load_cards
from weights.manifest import WeightsEntry, load_manifest

FILES = ("manifest.toml", "models.toml", "dialects.toml", "acceleration.toml", "costs.toml", "memory.toml",
         "prices.toml", "cards.toml", "parallel.toml")
"""The files a config dir holds."""


@dataclass(frozen=True)
class DarkroomConfig:
    """Everything under a config dir, parsed and checked against itself (names against served ids, acceleration
    and costs against the families)."""

    directory: Path
    manifest: Mapping[str, WeightsEntry]
    catalog: Catalog
    """The ids served (all configured ids, or the `models` asked for)."""
    names: ModelNames
    acceleration: Acceleration
    costs: Costs
    memory: Mapping[str, MemoryCoefficients]
    prices: PriceTable
    cards: Mapping[str, CardProfile]
    """GPU profiles the variant planner judges against (cards.toml)."""
    parallel: Mapping[str, ParallelSpec]
    """How each family spreads over a gang of GPUs (parallel.toml)."""

    @classmethod
    def load(cls, directory: Path, license_policy: str = "any", models: list[str] | tuple[str, ...] = ()
             ) -> DarkroomConfig:
        """Read `directory`; serve only `models` when given. ValueError (naming the file) on any mistake."""
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise ValueError(f"the config dir {directory} lacks {', '.join(missing)}; copy them from the package's "
                             "configs/ folder")
        manifest = load_manifest(directory / "manifest.toml")
        catalog = Catalog.load(manifest, directory / "models.toml", license_policy=license_policy)
        names = ModelNames.load(set(catalog.ids()) | set(catalog.video_ids()), directory / "dialects.toml")
        acceleration = Acceleration.load(directory / "acceleration.toml", catalog)
        if models:
            catalog = catalog.only(list(models))
        costs, parallel = load_costs(directory / "costs.toml"), load_parallel(directory / "parallel.toml")
        unknown = sorted(set(parallel) - set(costs.families))
        if unknown:
            raise ValueError(f"parallel.toml: no such family {', '.join(unknown)}; families: "
                             f"{', '.join(sorted(costs.families))}")
        return cls(directory, manifest, catalog, names, acceleration.serving(catalog), costs,
                   load_memory_table(directory / "memory.toml"), PriceTable.load(directory / "prices.toml"),
                   load_cards(directory / "cards.toml"), parallel)

    @classmethod
    def packaged(cls) -> DarkroomConfig:
        """The configuration shipped in the package's configs/ folder (what tests and benchmarks measure against);
        the server reads the dir its settings name instead."""
        import configs

        return cls.load(configs.packaged_dir())

    def coefficients(self, family: str) -> MemoryCoefficients:
        """The activation coefficients of `family`; KeyError naming the file when it has none."""
        try:
            return self.memory[family]
        except KeyError:
            raise KeyError(f"no activation coefficients for {family!r} in {self.directory / 'memory.toml'}") from None

    def with_demo(self, demo_weights: frozenset[str]) -> DarkroomConfig:
        """The same, with the step-cache presets of ids on demo weights (their thresholds differ)."""
        return replace(self, acceleration=self.acceleration.serving(self.catalog, demo_weights))

    def weights_needed(self) -> set[str]:
        """Weights entries the served ids run on."""
        return self.catalog.weights_needed()
