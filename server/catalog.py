"""The model catalog: configs/models.toml typed, validated against the families and the manifest."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.registry import FAMILIES
from server.errors import ApiError, ErrorCode
from weights.manifest import WeightsEntry

MODELS_PATH = Path(__file__).resolve().parent.parent / "configs" / "models.toml"

QUALITY_LONG_SIDE: dict[str, int] = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}


class ModelDefaults(BaseModel):
    """Per-model generation defaults; a request may override each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_inference_steps: int = Field(ge=1, le=200)
    guidance_scale: float = Field(ge=0.0, le=30.0)
    strength: float = Field(gt=0.0, le=1.0)


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
    defaults: ModelDefaults

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        unknown = [q for q in self.quality if q not in QUALITY_LONG_SIDE]
        if unknown:
            raise ValueError(f"{self.id}: unknown quality tiers {unknown}; known: {list(QUALITY_LONG_SIDE)}")
        if self.default_quality not in self.quality:
            raise ValueError(f"{self.id}: default_quality {self.default_quality!r} is not in quality")
        if self.default_num_images > self.max_num_images:
            raise ValueError(f"{self.id}: default_num_images exceeds max_num_images")
        for ar in self.aspect_ratios:
            if ar != "auto":
                parse_ratio(ar)
        if not set(self.output_formats) <= {"png", "jpeg", "webp"}:
            raise ValueError(f"{self.id}: output_formats must be a subset of png, jpeg, webp")
        return self


def parse_ratio(text: str) -> tuple[int, int]:
    """'16:9' -> (16, 9); ValueError for anything else."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 64 for p in parts):
        raise ValueError(f"aspect ratio {text!r} is not W:H")
    return int(parts[0]), int(parts[1])


class Catalog:
    """Exact-id lookup of model specs, cross-checked with families and weights at load time."""

    def __init__(self, models: dict[str, ModelSpec], manifest: dict[str, WeightsEntry]) -> None:
        for spec in models.values():
            if spec.family not in FAMILIES:
                raise ValueError(f"{spec.id}: family {spec.family!r} is not in pipelines/registry.py")
            if spec.weights not in manifest:
                raise ValueError(f"{spec.id}: weights {spec.weights!r} is not in weights/manifest.toml")
            if manifest[spec.weights].family != spec.family:
                raise ValueError(f"{spec.id}: weights {spec.weights!r} are for family {manifest[spec.weights].family}")
        self._models = models
        self.manifest = manifest

    @classmethod
    def load(cls, manifest: dict[str, WeightsEntry], path: Path = MODELS_PATH) -> Catalog:
        """Read configs/models.toml (or `path`)."""
        raw = tomllib.loads(path.read_text())
        models = {mid: ModelSpec(id=mid, **body) for mid, body in raw.get("models", {}).items()}
        return cls(models, manifest)

    def ids(self) -> list[str]:
        """Every servable id, sorted."""
        return sorted(self._models)

    def specs(self) -> list[ModelSpec]:
        """Every spec, sorted by id."""
        return [self._models[i] for i in self.ids()]

    def get(self, model_id: str) -> ModelSpec:
        """Exact match only; otherwise `unknown_model` naming every valid id."""
        spec = self._models.get(model_id)
        if spec is None:
            raise ApiError(
                422,
                ErrorCode.UNKNOWN_MODEL,
                f"unknown model {model_id[:100]!r}; valid models: {', '.join(self.ids())}",
                field="model",
            )
        return spec

    def weights_for(self, spec: ModelSpec) -> WeightsEntry:
        """The manifest entry that runs `spec`."""
        return self.manifest[spec.weights]
