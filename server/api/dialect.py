"""A dialect is one object, the whole spec of a hosted provider's API as darkroom speaks it: its routes, which paths
are its own, how its errors and webhooks look, which headers its clients send the key in (and send and read
besides), the field parity table of its request models, its section of the API reference and the client
`darkroom compare` talks to it with. `server/api/registry.py` collects the dialect modules; auth, CORS, the error
handler, the webhook sender, the OpenAPI document, docs/dialects.md and the CLI derive what they need from the
registered dialects instead of knowing the providers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel

from compare.clients import DialectClient
from server.errors import ApiError

if TYPE_CHECKING:
    from server.context import AppContext
    from server.jobs.store import JobRecord

ErrorShape = Callable[[ApiError], dict[str, Any]]
"""An error as the provider's clients expect it (darkroom's code and field always kept)."""
WebhookShape = Callable[["JobRecord", str, str, "AppContext"], dict[str, Any]]
"""(job, base URL, event, context) -> the callback body the provider's receivers expect."""


@dataclass(frozen=True)
class FieldPolicy:
    """One request model's parity table: each field the provider defines is mapped, warned about or refused."""

    title: str
    routes: str
    fields: Mapping[str, str]
    model: type[BaseModel] | None = None
    """The request model whose every field the table must cover (checked by tests/unit/test_dialect_parity.py)."""
    multipart_fields: frozenset[str] = frozenset()
    """Fields only a multipart body has (file parts), covered by the table too."""
    source: str = ""
    """The provider's own reference for these shapes (linked from docs/dialects.md)."""


@dataclass(frozen=True)
class Dialect:
    """One hosted provider's API as darkroom speaks it."""

    name: str
    routers: tuple[APIRouter, ...]
    prefixes: tuple[str, ...] = ()
    """Paths starting with one of these are this dialect's: their errors take its shape."""
    owns_path: Callable[[str], bool] | None = None
    """For dialects whose paths a prefix cannot tell apart (checked after the prefixes)."""
    claim_order: int = 9
    """Which dialect claims a path first when several could (the most specific first: Gemini's
    /v1/models/...:generateContent before Replicate's /v1/models/{owner}/{name} before OpenAI's /v1/models)."""
    error_shape: ErrorShape | None = None
    """None: darkroom's own `{"error": {code, message, field}}`."""
    webhook: WebhookShape | None = None
    tag: str = ""
    """The API reference's section for this dialect's routes (default: its name)."""
    tag_description: str = ""
    doc_order: int = 50
    """Where its section comes in the API reference (darkroom's own first)."""
    key_headers: tuple[str, ...] = ()
    """Headers its clients send the API key in, as the whole value (X-API-Key, x-key...)."""
    auth_schemes: tuple[str, ...] = ()
    """`Authorization: <scheme> <key>` schemes its clients use (Bearer, Key, Token)."""
    request_headers: tuple[str, ...] = ()
    """Other headers its clients send (Idempotency-Key, Prefer...): browsers may send them (CORS)."""
    response_headers: tuple[str, ...] = ()
    """Headers of its answers its clients read (x-fal-request-id...): browsers may read them (CORS)."""
    field_policies: tuple[FieldPolicy, ...] = ()
    """Its request models' parity tables (docs/dialects.md)."""
    compare_client: type[DialectClient] | None = None
    """How `darkroom compare` talks this dialect (its `name` is what --dialect and payloads say)."""

    def __post_init__(self) -> None:
        if not self.tag:
            object.__setattr__(self, "tag", self.name)

    def owns(self, path: str) -> bool:
        """Whether errors on `path` take this dialect's shape."""
        return path.startswith(self.prefixes) or (self.owns_path is not None and self.owns_path(path))


class ErrorShaper:
    """Renders an ApiError for the dialect that owns the path (the first that claims it, in registry order)."""

    def __init__(self, dialects: Sequence[Dialect]) -> None:
        self.dialects = tuple(dialects)

    def body(self, err: ApiError, path: str) -> dict[str, Any]:
        """The JSON body for `err` on `path`."""
        for dialect in self.dialects:
            if dialect.owns(path):
                return dialect.error_shape(err) if dialect.error_shape else err.body()
        return err.body()
