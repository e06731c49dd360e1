"""A dialect is one object: a hosted provider's routes, which paths are its own, how its errors look and how
its webhooks look. `server/api/registry.py` lists them; the app, the error handler and the webhook sender
iterate that list instead of knowing the providers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from server.errors import ApiError

if TYPE_CHECKING:
    from server.context import AppContext
    from server.jobs.store import JobRecord

ErrorShape = Callable[[ApiError], dict[str, Any]]
"""An error as the provider's clients expect it (darkroom's code and field always kept)."""
WebhookShape = Callable[["JobRecord", str, str, "AppContext"], dict[str, Any]]
"""(job, base URL, event, context) -> the callback body the provider's receivers expect."""


@dataclass(frozen=True)
class Dialect:
    """One hosted provider's API as darkroom speaks it."""

    name: str
    routers: tuple[APIRouter, ...]
    prefixes: tuple[str, ...] = ()
    """Paths starting with one of these are this dialect's: their errors take its shape."""
    owns_path: Callable[[str], bool] | None = None
    """For dialects whose paths a prefix cannot tell apart (checked after the prefixes)."""
    error_shape: ErrorShape | None = None
    """None: darkroom's own `{"error": {code, message, field}}`."""
    webhook: WebhookShape | None = None
    tag: str = ""
    """The API reference's section for this dialect's routes (default: its name)."""
    tag_description: str = ""
    doc_order: int = 50
    """Where its section comes in the API reference (darkroom's own first)."""

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
