"""Every registered family has every link a family needs: a manifest entry, memory coefficients, a cost row and a
tiny builder; every served id points at a registered family. A family missing one fails here, not at a user's
first request (CONTRIBUTING.md lists the links)."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest

from pipelines.base import Family
from pipelines.registry import FAMILIES
from server.config import DarkroomConfig
from tests.packaged import packaged_config

CONFIG = packaged_config()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_every_link(name: str) -> None:
    cls = FAMILIES[name]
    assert cls.name == name
    assert any(e.family == name for e in CONFIG.manifest.values()), f"{name}: no entry in manifest.toml"
    coeffs = CONFIG.coefficients(name)  # KeyError names memory.toml
    assert coeffs.bytes_per_token > 0 and (coeffs.vae_bytes_per_pixel > 0 or coeffs.vae_bytes_per_voxel > 0)
    cost = CONFIG.costs.families.get(name)
    assert cost is not None, f"{name}: no [families.{name}] row in costs.toml"
    assert cost.job_s > 0 and cost.ref_steps > 0
    module, _, func = cls.tiny_builder.partition(":")
    assert callable(getattr(importlib.import_module(module), func)), f"{name}: tiny_builder {cls.tiny_builder}"
    assert isinstance(cls.pipeline_class, str) and cls.size_multiple > 0


def test_every_served_id_runs_on_a_registered_family() -> None:
    for spec in [*CONFIG.catalog.specs(), *CONFIG.catalog.video_specs()]:
        assert spec.family in FAMILIES, spec.id
        assert CONFIG.catalog.weights_for(spec).family == spec.family, spec.id


def test_a_missing_link_fails_loudly(tmp_path: object) -> None:
    """The checks above can fail: a config without one family's coefficients, or a family without a builder."""
    partial = replace(CONFIG, memory={k: v for k, v in CONFIG.memory.items() if k != "sdxl"})
    with pytest.raises(KeyError, match="memory.toml"):
        partial.coefficients("sdxl")

    class Orphan(Family):  # type: ignore[misc]
        name = "orphan"
        tiny_builder = "weights.tiny.sdxl:no_such_builder"

    module, _, func = Orphan.tiny_builder.partition(":")
    assert not hasattr(importlib.import_module(module), func)
    assert Orphan.name not in FAMILIES


def test_the_packaged_config_is_what_the_default_settings_read() -> None:
    from server.settings import Settings

    assert Settings().engine.config_dir == CONFIG.directory
    assert DarkroomConfig.load(CONFIG.directory).catalog.ids() == CONFIG.catalog.ids()
