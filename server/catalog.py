"""The model catalog: configs/models.toml typed, validated against the families and the manifest."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.registry import FAMILIES
from server.errors import ApiError, ErrorCode
from weights.manifest import WeightsEntry

QUALITY_LONG_SIDE: dict[str, int] = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}
# Video resolution tiers name the short side. "240p" is darkroom's draft tier for fast motion previews.
RESOLUTION_SHORT_SIDE: dict[str, int] = {"240p": 240, "480p": 480, "720p": 720, "1080p": 1080}


class ModelDefaults(BaseModel):
    """Per-model generation defaults; a request may override each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_inference_steps: int = Field(ge=1, le=200)
    guidance_scale: float = Field(ge=0.0, le=30.0)
    strength: float = Field(gt=0.0, le=1.0)


class CommercialOverride(BaseModel):
    """What changes about an id under DARKROOM_LICENSE_POLICY=commercial (another stand-in, same limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    weights: str
    description: str
    capabilities: list[str] | None = None
    defaults: ModelDefaults | None = None


class ModelSpec(BaseModel):
    """One hosted model id and the local stand-in that serves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    family: str
    weights: str
    name: str
    description: str
    capabilities: list[str]
    quality: list[str] = Field(min_length=1)
    default_quality: str
    aspect_ratios: list[str] = Field(min_length=1)
    max_source_images: int = Field(ge=0)
    max_reference_images: int = Field(ge=0)
    max_num_images: int = Field(ge=1)
    default_num_images: int = Field(ge=1)
    supports_seed: bool = True
    output_formats: list[str] = ["png", "jpeg", "webp"]
    commercial_alternative: str | None = None
    """Id whose stand-in serves this id when DARKROOM_LICENSE_POLICY=commercial and ours is not commercial."""
    commercial: CommercialOverride | None = None
    """Or: the stand-in for that case given inline, keeping this id's limits (exclusive with the above)."""
    defaults: ModelDefaults

    def commercial_variant(self) -> ModelSpec | None:
        """This id as served under the commercial policy when it names an inline override."""
        if self.commercial is None:
            return None
        update = {k: v for k, v in self.commercial.model_dump(exclude_none=True).items() if k != "defaults"}
        if self.commercial.defaults is not None:
            update["defaults"] = self.commercial.defaults
        return self.model_copy(update={**update, "commercial": None})

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        unknown = [q for q in self.quality if q not in QUALITY_LONG_SIDE]
        if unknown:
            raise ValueError(f"{self.id}: unknown quality tiers {unknown}; known: {list(QUALITY_LONG_SIDE)}")
        if self.default_quality not in self.quality:
            raise ValueError(f"{self.id}: default_quality {self.default_quality!r} is not in quality")
        if self.default_num_images > self.max_num_images:
            raise ValueError(f"{self.id}: default_num_images exceeds max_num_images")
        _check_ratios(self.aspect_ratios)
        if not set(self.output_formats) <= {"png", "jpeg", "webp"}:
            raise ValueError(f"{self.id}: output_formats must be a subset of png, jpeg, webp")
        if self.commercial is not None and self.commercial_alternative is not None:
            raise ValueError(f"{self.id}: give commercial or commercial_alternative, not both")
        return self


class VideoDefaults(BaseModel):
    """Per-model video defaults; a request may override each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_inference_steps: int = Field(ge=1, le=200)
    guidance_scale: float = Field(ge=0.0, le=30.0)
    duration: int
    resolution: str
    fps: int
    generate_audio: bool


class VideoModelSpec(BaseModel):
    """One hosted video model id and the local image-to-video stand-in that serves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    family: str
    weights: str
    name: str
    description: str
    durations: list[int] = Field(min_length=1)
    resolutions: list[str] = Field(min_length=1)
    aspect_ratios: list[str] = Field(min_length=1)
    fps: list[int] = Field(min_length=1)
    max_num_videos: int = Field(1, ge=1)
    commercial_alternative: str | None = None
    defaults: VideoDefaults

    @model_validator(mode="after")
    def _consistent(self) -> VideoModelSpec:
        unknown = [r for r in self.resolutions if r not in RESOLUTION_SHORT_SIDE]
        if unknown:
            raise ValueError(f"{self.id}: unknown resolutions {unknown}; known: {list(RESOLUTION_SHORT_SIDE)}")
        _check_ratios(self.aspect_ratios)
        d = self.defaults
        if d.duration not in self.durations or d.resolution not in self.resolutions or d.fps not in self.fps:
            raise ValueError(f"{self.id}: defaults must be among the listed durations, resolutions and fps")
        return self


def _check_ratios(ratios: list[str]) -> None:
    for ar in ratios:
        if ar != "auto":
            parse_ratio(ar)


def parse_ratio(text: str) -> tuple[int, int]:
    """'16:9' -> (16, 9); ValueError for anything else."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 64 for p in parts):
        raise ValueError(f"aspect ratio {text!r} is not W:H")
    return int(parts[0]), int(parts[1])


AnySpec = ModelSpec | VideoModelSpec


class Catalog:
    """Exact-id lookup of image and video model specs, cross-checked with families and weights at load time.

    With `license_policy="commercial"`, an id whose weights are not licensed for
    commercial use is served by its `commercial_alternative`'s stand-in (under
    the same public id), so what a client is told runs is what runs.
    """

    def __init__(self, models: dict[str, ModelSpec], manifest: dict[str, WeightsEntry],
                 videos: dict[str, VideoModelSpec] | None = None, license_policy: str = "any") -> None:
        self.manifest = manifest
        self.license_policy = license_policy
        videos = videos or {}
        variants = [v for v in (m.commercial_variant() for m in models.values()) if v is not None]
        for spec in [*models.values(), *variants, *videos.values()]:
            if spec.family not in FAMILIES:
                raise ValueError(f"{spec.id}: family {spec.family!r} is not in pipelines/registry.py")
            fam = FAMILIES[spec.family]
            beyond = [q for q in getattr(spec, "quality", []) if QUALITY_LONG_SIDE[q] > fam.native_max_long_side]
            if beyond and not fam.supports_refine():
                raise ValueError(f"{spec.id}: {fam.name} renders at most {fam.native_max_long_side} px natively "
                                 f"and has no refine pass for {beyond}")
            if spec.weights not in manifest:
                raise ValueError(f"{spec.id}: weights {spec.weights!r} is not in the config dir's manifest.toml")
            if manifest[spec.weights].family != spec.family:
                raise ValueError(f"{spec.id}: weights {spec.weights!r} are for family {manifest[spec.weights].family}")
        self._models = self._apply_policy(models)
        self._videos = self._apply_policy(videos)

    def _apply_policy(self, specs: dict[str, AnySpec]) -> dict[str, AnySpec]:
        if self.license_policy != "commercial":
            return dict(specs)
        out: dict[str, AnySpec] = {}
        for mid, spec in specs.items():
            if self.manifest[spec.weights].all_commercial:
                out[mid] = spec
                continue
            variant = spec.commercial_variant() if isinstance(spec, ModelSpec) else None
            if variant is not None and self.manifest[variant.weights].all_commercial:
                out[mid] = variant
                continue
            alt = specs.get(spec.commercial_alternative or "")
            if alt is None or not self.manifest[alt.weights].all_commercial:
                raise ValueError(f"{mid}: weights {spec.weights!r} are not licensed for commercial use and no "
                                 "commercially usable commercial_alternative or commercial stand-in is configured")
            out[mid] = alt.model_copy(update={"id": mid, "name": spec.name, "commercial_alternative": None})
        return out

    @classmethod
    def load(cls, manifest: Mapping[str, WeightsEntry], path: Path, license_policy: str = "any") -> Catalog:
        """Read the config dir's models.toml."""
        raw = tomllib.loads(path.read_text())
        models = {mid: ModelSpec(id=mid, **body) for mid, body in raw.get("models", {}).items()}
        videos = {mid: VideoModelSpec(id=mid, **body) for mid, body in raw.get("videos", {}).items()}
        return cls(models, manifest, videos, license_policy)

    def only(self, ids: list[str]) -> Catalog:
        """A catalog serving just `ids` (image or video); ValueError naming any id that is not configured."""
        unknown = sorted(set(ids) - set(self._models) - set(self._videos))
        if unknown:
            raise ValueError(f"models {unknown} are not in configs/models.toml; known: "
                             f"{', '.join(self.ids() + self.video_ids())}")
        narrowed = copy.copy(self)
        narrowed._models = {k: v for k, v in self._models.items() if k in ids}
        narrowed._videos = {k: v for k, v in self._videos.items() if k in ids}
        return narrowed

    def ids(self) -> list[str]:
        """Every image model id, sorted."""
        return sorted(self._models)

    def video_ids(self) -> list[str]:
        """Every video model id, sorted."""
        return sorted(self._videos)

    def specs(self) -> list[ModelSpec]:
        """Every image spec (as served under the licence policy), sorted by id."""
        return [self._models[i] for i in self.ids()]  # type: ignore[misc]

    def video_specs(self) -> list[VideoModelSpec]:
        """Every video spec (as served under the licence policy), sorted by id."""
        return [self._videos[i] for i in self.video_ids()]  # type: ignore[misc]

    def all_ids(self) -> list[str]:
        """Every image and video id, sorted."""
        return sorted([*self._models, *self._videos])

    def any_spec(self, model_id: str) -> AnySpec:
        """The spec of an image or video id (exact match; KeyError otherwise)."""
        return self._models.get(model_id) or self._videos[model_id]

    def weights_needed(self) -> set[str]:
        """Weights entries that some served id runs on."""
        return {s.weights for s in [*self._models.values(), *self._videos.values()]}

    def get(self, model_id: str) -> ModelSpec:
        """Exact match only; otherwise `unknown_model` naming every valid id."""
        return self._lookup(self._models, model_id, self.ids())  # type: ignore[return-value]

    def get_video(self, model_id: str) -> VideoModelSpec:
        """Exact match among video ids; otherwise `unknown_model` naming every valid video id."""
        return self._lookup(self._videos, model_id, self.video_ids())  # type: ignore[return-value]

    @staticmethod
    def _lookup(table: dict[str, AnySpec], model_id: str, valid: list[str]) -> AnySpec:
        spec = table.get(model_id)
        if spec is None:
            raise ApiError(
                422,
                ErrorCode.UNKNOWN_MODEL,
                f"unknown model {model_id[:100]!r}; valid models: {', '.join(valid)}",
                field="model",
            )
        return spec

    def weights_for(self, spec: AnySpec) -> WeightsEntry:
        """The manifest entry that runs `spec`."""
        return self.manifest[spec.weights]
