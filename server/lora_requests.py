"""A request's LoRAs resolved into adapters the engine can apply: each named adapter found (the caller's uploads,
the mounted folder, or a URL fetched once through the SSRF guard), checked against the requested model's family,
and recorded (id or URL, name, sha256, scale, source) so the task can be shown and re-run exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pipelines.base import AdapterUse
from pipelines.lora_format import LoraFormatError
from pipelines.registry import family_class
from server.asks import LoraRef
from server.catalog import Catalog
from server.errors import ApiError, ErrorCode
from server.loras import LoraLibrary, LoraRecord
from server.media.fetch import ImageFetcher

MAX_LORAS = 4
"""Adapters one request may bring."""
MAX_SCALE = 4.0


class LoraResolver:
    """Turns a request's `LoraRef`s into `AdapterUse`s for one model id."""

    def __init__(self, library: LoraLibrary, fetcher: ImageFetcher, catalog: Catalog) -> None:
        self.library = library
        self.fetcher = fetcher
        self.catalog = catalog

    def _specs(self) -> list[Any]:
        return [*self.catalog.specs(), *self.catalog.video_specs()]

    def lora_ids(self) -> list[str]:
        """Served model ids whose family takes LoRAs."""
        return sorted(s.id for s in self._specs() if family_class(s.family).takes_loras)

    async def resolve(self, model_id: str, family: str, refs: Sequence[LoraRef], caller: str | None
                      ) -> tuple[tuple[AdapterUse, ...], list[dict[str, Any]]]:
        """(adapters for the render, what the task records); ApiError 4xx for anything the client must change."""
        if not refs:
            return (), []
        field = refs[0].field.split("[", 1)[0]
        if not family_class(family).takes_loras:
            raise ApiError(422, ErrorCode.UNSUPPORTED_FEATURE, f"{model_id} does not take LoRA adapters; the ids "
                           f"that do: {', '.join(self.lora_ids())}", field)
        if len(refs) > MAX_LORAS:
            raise ApiError(422, ErrorCode.INVALID_REQUEST, f"at most {MAX_LORAS} LoRA adapters per request", field)
        uses: list[AdapterUse] = []
        recorded: list[dict[str, Any]] = []
        for ref in refs:
            if not -MAX_SCALE <= ref.scale <= MAX_SCALE:
                raise ApiError(422, ErrorCode.INVALID_REQUEST, f"a LoRA scale must be between -{MAX_SCALE:g} and "
                               f"{MAX_SCALE:g} (1 applies it as trained, 0 not at all)", f"{ref.field}.scale")
            record = await self._find(ref, caller)
            self._check_fits(record, model_id, family, ref.field)
            uses.append(AdapterUse(record.sha256, float(ref.scale)))
            recorded.append({"id": None if record.source == "url" else record.id, "url": record.url,
                             "name": record.name, "sha256": record.sha256, "scale": float(ref.scale),
                             "source": record.source, "rank": record.rank})
        return tuple(uses), recorded

    async def _find(self, ref: LoraRef, caller: str | None) -> LoraRecord:
        if (ref.id is None) == (ref.url is None):
            raise ApiError(422, ErrorCode.INVALID_REQUEST, "each LoRA needs exactly one of `id` (an uploaded or "
                           "mounted adapter) and `url`", ref.field)
        if ref.id is not None:
            try:
                record = await asyncio.to_thread(self.library.get, ref.id, caller)
            except ValueError as exc:
                raise ApiError(422, ErrorCode.INVALID_REQUEST, str(exc), f"{ref.field}.id") from None
            if record is None:
                raise ApiError(404, ErrorCode.NOT_FOUND, f"no LoRA {ref.id!r} for this key: upload it with POST "
                               "/api/v1/loras (GET /api/v1/loras lists yours and the server's)", f"{ref.field}.id")
            return record
        assert ref.url is not None
        # A file the dialect read from this server's own files API belongs to the caller: it is kept by content
        # hash but never remembered by URL, so another key naming the same URL cannot reuse it.
        remember = ref.data is None
        record = await asyncio.to_thread(self.library.url_record, ref.url) if remember else None
        if record is not None:
            return record
        data = ref.data if ref.data is not None else await self._fetch(ref.url, f"{ref.field}.url")
        try:
            return await asyncio.to_thread(self.library.add_url, ref.url, data, remember)
        except LoraFormatError as exc:
            code = ErrorCode.UNSUPPORTED_MEDIA_TYPE if exc.code == "unsupported_format" else ErrorCode.INVALID_LORA
            raise ApiError(422, code, exc.message, f"{ref.field}.url") from None
        except OverflowError as exc:
            raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, str(exc), f"{ref.field}.url") from None

    async def _fetch(self, url: str, field: str) -> bytes:
        try:
            return await self.fetcher.fetch(url, field)
        except ApiError as exc:
            if exc.code is ErrorCode.IMAGE_TOO_LARGE:
                raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, f"the LoRA file is larger than "
                               f"{self.fetcher.limits.max_bytes / 1e6:.0f} MB (DARKROOM_MAX_LORA_MB)", field) from None
            raise ApiError(exc.status, exc.code, exc.message.replace("image URL", "LoRA URL"), field) from None

    def _check_fits(self, record: LoraRecord, model_id: str, family: str, field: str) -> None:
        if family in record.families or family not in self.library.known_families():
            # Fits, or this front end cannot read that family's weights (a Ray cluster's are on its nodes): the
            # worker checks the layers when it applies the adapter.
            return
        if record.families:
            trained = ", ".join(record.families)
            ids = sorted(s.id for s in self._specs() if s.family in record.families)
            raise ApiError(422, ErrorCode.LORA_MISMATCH, f"LoRA {record.name!r} was trained for {trained} (ids: "
                           f"{', '.join(ids) or 'none served here'}), not for {model_id} ({family})", field)
        reasons = self.library.misfit_reason(record, family)
        if reasons or record.layout in ("diffusers", "diffusers-old", "kohya"):
            raise ApiError(422, ErrorCode.LORA_MISMATCH, f"LoRA {record.name!r} fits none of this server's model "
                           f"families: {'; '.join(reasons[:2]) or 'its layers are not theirs'}", field)
