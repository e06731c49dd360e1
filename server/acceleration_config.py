"""configs/acceleration.toml, typed and checked against the served ids, weights and families at start-up.

Gives each weights entry its `LoadProfile` (with the warm-up sizes its ids serve by default) and each model id
its `StepCache`, and describes both per id for the model lists.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.acceleration import ATTENTION_BACKENDS, LoadProfile
from pipelines.registry import family_class
from pipelines.step_cache import StepCache
from pipelines.variants import strictest, variant
from pipelines.video_base import VideoFamily
from server.catalog import QUALITY_LONG_SIDE, RESOLUTION_SHORT_SIDE, Catalog
from server.engine.sizing import output_size, video_size


class WeightsAcceleration(BaseModel):
    """Load-time settings of one weights entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attention: list[str] = Field(default_factory=lambda: ["native"], min_length=1)
    compile: Literal["auto", "on", "off"] = "auto"
    variant: str = "auto"
    """auto (the planner chooses per device, within the quality floor of the ids on these weights) or a variant
    name from pipelines/variants.py to pin (a device that cannot run it fails those jobs `unsupported_feature`)."""
    fuse_qkv: bool = False
    channels_last: bool = False
    lora_slots: int = Field(4, ge=0, le=16)
    lora_max_rank: int = Field(64, ge=1, le=1024)

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: str) -> str:
        if v != "auto":
            variant(v)
        return v

    @field_validator("attention")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if b not in ATTENTION_BACKENDS]
        if bad:
            raise ValueError(f"unknown or refused attention backends {bad}; use {', '.join(ATTENTION_BACKENDS)} "
                             "(*_hub backends download kernels at run time and are never used)")
        return v


class ModelAcceleration(BaseModel):
    """Per-call settings of one model id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cache: Literal["none", "fbcache", "taylorseer"] = "none"
    cache_threshold: float = Field(0.0, ge=0.0, le=1.0)
    """fbcache: the relative change of the first block's output below which a step skips the rest."""
    demo_cache_threshold: float | None = Field(None, gt=0.0, le=1.0)
    """fbcache on random demo weights, whose first-block residuals move differently from a trained model's: set
    so that the demo skips about as many passes as the real model does at `cache_threshold`."""
    cache_interval: int = Field(0, ge=0)
    """taylorseer: a full pass every this many steps (the ones between are extrapolated)."""
    cache_warmup_steps: int = Field(3, ge=2)
    """taylorseer: full passes before the first prediction (two give the first-order term)."""
    quality_floor: Literal["4bit", "5bit", "8bit", "bf16"] = "8bit"
    """The lowest weight precision this id may run at (pipelines/variants.py QUALITY_FLOORS): quality tiers stay
    at 8-bit or above, fast tiers may go to 4-bit."""
    variant: str | None = None
    """Pin these weights' variant for this id (ids sharing weights must agree: they share one load)."""

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: str | None) -> str | None:
        if v is not None:
            variant(v)
        return v

    @model_validator(mode="after")
    def _settings(self) -> ModelAcceleration:
        if self.cache == "fbcache" and self.cache_threshold <= 0:
            raise ValueError("cache = fbcache needs cache_threshold > 0")
        if self.cache == "taylorseer" and self.cache_interval < 2:
            raise ValueError("cache = taylorseer needs cache_interval >= 2 (1 would compute every step)")
        return self

    def step_cache(self, demo: bool) -> StepCache:
        """The cache a call runs with (on demo weights when `demo`)."""
        if self.cache == "fbcache":
            threshold = self.demo_cache_threshold if demo and self.demo_cache_threshold else self.cache_threshold
            return StepCache("fbcache", threshold=threshold)
        if self.cache == "taylorseer":
            return StepCache("taylorseer", interval=self.cache_interval, warmup_steps=self.cache_warmup_steps)
        return StepCache()


class Acceleration:
    """The validated file: load profiles per weights, step caches per id."""

    def __init__(self, weights: dict[str, WeightsAcceleration], models: dict[str, ModelAcceleration],
                 catalog: Catalog, demo_weights: frozenset[str] = frozenset()) -> None:
        self._weights = weights
        self._models = models
        self.catalog = catalog
        self.demo_weights = demo_weights

    @classmethod
    def load(cls, path: Path, catalog: Catalog) -> Acceleration:
        """Read and check `path` against the catalog; ValueError naming the entry on any mistake."""
        raw = tomllib.loads(path.read_text())
        unknown = set(raw) - {"weights", "models"}
        if unknown:
            raise ValueError(f"{path.name}: unknown tables {sorted(unknown)}")
        weights = {n: WeightsAcceleration(**b) for n, b in raw.get("weights", {}).items()}
        models = {m: ModelAcceleration(**b) for m, b in raw.get("models", {}).items()}
        known_weights = set(catalog.manifest)
        if bad := sorted(set(weights) - known_weights):
            raise ValueError(f"{path.name}: weights {bad} are not in the config dir's manifest.toml")
        ids = set(catalog.all_ids())
        for model_id, accel in models.items():
            if model_id not in ids:
                raise ValueError(f"{path.name}: model {model_id!r} is not in models.toml")
            fam = family_class(catalog.any_spec(model_id).family)
            # Under the commercial licence policy an id may run another family; only the configured one counts.
            if accel.cache != "none" and not fam.step_cache and catalog.license_policy == "any":
                raise ValueError(f"{path.name}: {model_id} runs {fam.name}, which takes no step cache; remove cache")
        accel = cls(weights, models, catalog)
        for name in sorted(catalog.weights_needed()):
            if len(pins := accel._pins(name)) > 1:
                raise ValueError(f"{path.name}: the ids on {name} ({', '.join(accel._ids_on(name))}) pin different "
                                 f"variants {sorted(pins)}; they share one load of the weights, so pin one")
        return accel

    def serving(self, catalog: Catalog, demo_weights: frozenset[str] = frozenset()) -> Acceleration:
        """The same settings for a narrowed catalog (DARKROOM_MODELS): warm-ups and hooks for served ids only;
        ids on `demo_weights` use their demo thresholds."""
        return Acceleration(self._weights, self._models, catalog, demo_weights)

    def step_cache(self, model_id: str) -> StepCache:
        """The per-call cache of `model_id` (none unless configured)."""
        accel = self._models.get(model_id)
        spec = self.catalog.any_spec(model_id)
        if accel is None or accel.cache == "none" or not family_class(spec.family).step_cache:
            return StepCache()
        return accel.step_cache(demo=spec.weights in self.demo_weights)

    def _ids_on(self, weights: str) -> list[str]:
        return [s.id for s in [*self.catalog.specs(), *self.catalog.video_specs()] if s.weights == weights]

    def quality_floor(self, weights: str) -> str:
        """The strictest quality floor among the served ids on `weights` (they share one load)."""
        return strictest([self._models.get(i, ModelAcceleration()).quality_floor for i in self._ids_on(weights)])

    def _pins(self, weights: str) -> set[str]:
        """Every variant pinned for `weights`: on the weights entry and on the ids running them."""
        pins = {v for i in self._ids_on(weights) if i in self._models and (v := self._models[i].variant)}
        on_weights = self._weights.get(weights, WeightsAcceleration()).variant
        return pins | ({on_weights} if on_weights != "auto" else set())

    def variant_pin(self, weights: str) -> str | None:
        """The variant the operator pinned for `weights` (on the weights or on an id running them), or None."""
        pins = self._pins(weights)
        return next(iter(pins)) if pins else None

    def load_profile(self, weights: str) -> LoadProfile:
        """What to apply when `weights` load: the file's settings, the step-cache hooks when some served id on
        these weights is cached, and warm-up renders at those ids' default sizes."""
        w = self._weights.get(weights, WeightsAcceleration())
        ids = self._ids_on(weights)
        cached = any(self.step_cache(i).kind != "none" for i in ids)
        pin = self.variant_pin(weights)
        return LoadProfile(attention=tuple(w.attention), compile=w.compile, fuse_qkv=w.fuse_qkv,
                           variants=(pin,) if pin else (), variant_pinned=pin is not None,
                           channels_last=w.channels_last, step_cache_hooks=cached, warmup=self._warmup(ids),
                           lora_slots=w.lora_slots, lora_max_rank=w.lora_max_rank)

    def _warmup(self, ids: list[str]) -> tuple[tuple[int, int, int], ...]:
        """Each id's default size in its default shape and one other (the first other size is the one that
        recompiles with symbolic shapes; after it no size does)."""
        sizes: list[tuple[int, int, int]] = []
        for model_id in ids:
            spec = self.catalog.any_spec(model_id)
            fam = family_class(spec.family)
            if issubclass(fam, VideoFamily):
                d = spec.defaults  # type: ignore[union-attr]
                frames = fam.valid_frames(d.duration * d.fps)
                shapes = [video_size(RESOLUTION_SHORT_SIDE[d.resolution], r, fam.size_multiple) for r in
                          ((16, 9), (9, 16))]
                sizes += [(w, h, frames) for w, h in shapes]
            else:
                long_side = QUALITY_LONG_SIDE[spec.default_quality]  # type: ignore[union-attr]
                sizes += [(*output_size(long_side, r, fam.size_multiple), 0) for r in ((1, 1), (16, 9))]
        return tuple(dict.fromkeys(sizes))

    def describe(self, model_id: str) -> dict[str, object]:
        """What the file asks for `model_id` (the model lists show it beside what is active)."""
        spec = self.catalog.any_spec(model_id)
        profile = self.load_profile(spec.weights)
        cache = self.step_cache(model_id)
        return {"attention": list(profile.attention), "compile": profile.compile,
                "variant": self.variant_pin(spec.weights) or "auto", "quality_floor": self.quality_floor(spec.weights),
                "fused_qkv": profile.fuse_qkv, "channels_last": profile.channels_last,
                "step_cache": cache.describe()}
