"""The payload file: the requests a comparison sends to both sides, as JSON Lines or YAML.

Each payload is dialect-neutral (model, prompt, images, params); the dialect's client turns it into that API's
request. Images are file paths (relative to the payload file) or http(s)/data URLs.

    {"id": "red-door", "model": "flux-kontext-pro", "prompt": "paint the door red", "images": ["door.png"],
     "params": {"aspect_ratio": "1:1"}, "tier": "1K"}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DIALECTS = ("qolaba", "openai", "fal", "replicate", "bfl", "gemini")
_ID = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


class Payload(BaseModel):
    """One request of the comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("", description="Names the payload in the report and in resume records (default: p001...).")
    model: str = Field(min_length=1, max_length=200, description="The model as the dialect names it.")
    prompt: str = Field(min_length=1, max_length=4000)
    images: tuple[str, ...] = Field((), max_length=16, description="Source images: paths or http(s)/data URLs.")
    params: dict[str, Any] = Field(default_factory=dict, description="Extra request fields, sent as they are.")
    dialect: Literal["qolaba", "openai", "fal", "replicate", "bfl", "gemini"] | None = Field(
        None, description="This payload's dialect (default: the run's --dialect).")
    kind: Literal["image", "video"] = "image"
    tier: str | None = Field(None, max_length=40, description="Price tier (default: params' quality or resolution).")

    @field_validator("id")
    @classmethod
    def _sane_id(cls, value: str) -> str:
        if value and not _ID.match(value):
            raise ValueError("id may hold letters, digits, '.', '_' and '-' (at most 80)")
        return value

    def price_tier(self) -> str | None:
        """The tier a price table row is looked up by."""
        for key in ("quality", "resolution", "image_size"):
            if self.tier is None and isinstance(self.params.get(key), str):
                return self.params[key]
        return self.tier


class PayloadError(ValueError):
    """The payload file cannot be used; the message says where and what to change."""


def load_payloads(path: Path) -> list[Payload]:
    """Read and check every payload (ids unique, image files present); paths become absolute."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PayloadError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        raw = _yaml_items(text, path)
    else:
        raw = _jsonl_items(text, path)
    if not raw:
        raise PayloadError(f"{path} holds no payloads")
    payloads: list[Payload] = []
    for n, (where, item) in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise PayloadError(f"{where}: a payload is an object with model, prompt and optional images/params")
        try:
            payload = Payload.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "payload"
            raise PayloadError(f"{where}: {field}: {first['msg']}") from None
        images = tuple(_resolve_image(ref, path.parent, where) for ref in payload.images)
        payloads.append(payload.model_copy(update={"id": payload.id or f"p{n:03d}", "images": images}))
    seen: set[str] = set()
    for p in payloads:
        if p.id in seen:
            raise PayloadError(f"{path}: payload id {p.id!r} appears twice; ids name results for resuming")
        seen.add(p.id)
    return payloads


def _jsonl_items(text: str, path: Path) -> list[tuple[str, Any]]:
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            items.append((f"{path.name}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PayloadError(f"{path.name}:{lineno}: not JSON ({exc.msg}); one payload object per line") from None
    return items


def _yaml_items(text: str, path: Path) -> list[tuple[str, Any]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PayloadError(f"{path.name}: not YAML ({exc})") from None
    if isinstance(data, dict) and "payloads" in data:
        data = data["payloads"]
    if not isinstance(data, list):
        raise PayloadError(f"{path.name}: expected a list of payloads (or a mapping with a 'payloads' list)")
    return [(f"{path.name} item {i}", item) for i, item in enumerate(data, start=1)]


def _resolve_image(ref: str, base: Path, where: str) -> str:
    if ref.startswith(("http://", "https://", "data:")):
        return ref
    file = (base / ref).resolve()
    if not file.is_file():
        raise PayloadError(f"{where}: image {ref!r} is not a file (paths are relative to the payload file)")
    return str(file)
