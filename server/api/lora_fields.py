"""The LoRA fields of every dialect's request, in one place: darkroom's `loras: [{id | url, scale}]`, fal's
`loras: [{path, scale}]`, Replicate's `lora_weights`/`lora_scale` (+ `extra_lora`/`extra_lora_scale`) and BFL's
`finetune_id`/`finetune_strength`, each turned into the dialect-neutral `LoraRef`s the service resolves."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.asks import LoraRef

_SCALE = Field(1.0, ge=-4.0, le=4.0, description="Strength: 1 applies the adapter as trained, 0 not at all.")


def _json_list(value: object) -> object:
    """A multipart form sends a list of objects as one JSON text field."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class LoraItem(BaseModel):
    """darkroom's (and the hosted platform's) adapter reference."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=200, description="An uploaded adapter's id (POST /api/v1/loras) or a "
                           "file name in the server's LoRA folder.")
    url: str | None = Field(None, max_length=4000, description="An http(s) URL of a .safetensors LoRA (fetched once "
                            "through the URL policy, kept by content hash).")
    scale: float = _SCALE


class FalLora(BaseModel):
    """fal's `loras` entry: `path` is a URL (or, on darkroom, a library id)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4000)
    scale: float = _SCALE


def parse_list(value: object) -> object:
    """Validator helper for list fields that may arrive as a JSON string (multipart)."""
    return _json_list(value)


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://", "data:"))


def refs_from_items(items: list[LoraItem] | None, field: str = "loras") -> tuple[LoraRef, ...]:
    """darkroom's `loras` list."""
    return tuple(LoraRef(f"{field}[{i}]", item.id, item.url, item.scale) for i, item in enumerate(items or []))


def refs_from_paths(items: list[FalLora] | None, field: str = "loras") -> tuple[LoraRef, ...]:
    """fal's `loras` list: a URL path is fetched, anything else is a library id."""
    return tuple(LoraRef(f"{field}[{i}]", None if _is_url(x.path) else x.path, x.path if _is_url(x.path) else None,
                         x.scale) for i, x in enumerate(items or []))


def ref_from_weights(value: str | None, scale: float, field: str) -> tuple[LoraRef, ...]:
    """One adapter named by a URL or an id (Replicate's lora_weights / extra_lora, BFL's finetune_id)."""
    if not value:
        return ()
    return (LoraRef(field, None if _is_url(value) else value, value if _is_url(value) else None, scale),)


class LoraListField(BaseModel):
    """Mixin for request models with darkroom's `loras` field."""

    loras: list[LoraItem] | None = Field(None, max_length=4, description="darkroom extension: up to 4 LoRA "
                                         "adapters, each {id | url, scale}.")

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_json(cls, v: Any) -> Any:
        return _json_list(v)
