"""Every dialect darkroom speaks: each module of server/api that defines a `DIALECT` (adding a dialect is adding
its module, its test and its docs page; nothing here names one). What the rest of the server needs of all of them
is derived here: the order paths are claimed in, the key headers, the CORS headers, the parity tables and the names
`darkroom compare` speaks."""

from __future__ import annotations

import importlib
import pkgutil

import server.api
from server.api.dialect import Dialect, FieldPolicy


def _discover() -> tuple[Dialect, ...]:
    found = []
    for info in pkgutil.iter_modules(server.api.__path__):
        module = importlib.import_module(f"server.api.{info.name}")
        dialect = getattr(module, "DIALECT", None)
        if isinstance(dialect, Dialect):
            found.append(dialect)
    return tuple(sorted(found, key=lambda d: (d.claim_order, d.name)))


DIALECTS: tuple[Dialect, ...] = _discover()
"""In the order their paths are claimed for error shapes (most specific first)."""


def key_headers() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(headers that carry the key whole, `Authorization` schemes), over every dialect, lower-case."""
    headers = sorted({h.lower() for d in DIALECTS for h in d.key_headers})
    schemes = sorted({s.lower() for d in DIALECTS for s in d.auth_schemes})
    return tuple(headers), tuple(schemes)


def cors_headers() -> tuple[list[str], list[str]]:
    """(request headers browsers may send, response headers browsers may read), over every dialect."""
    allow = {"Authorization", "Content-Type"} | {h for d in DIALECTS for h in (*d.key_headers, *d.request_headers)}
    expose = {h for d in DIALECTS for h in d.response_headers}
    return sorted(allow, key=str.lower), sorted(expose, key=str.lower)


def field_policies() -> list[FieldPolicy]:
    """Every dialect's parity tables, in the API reference's order."""
    return [p for d in sorted(DIALECTS, key=lambda d: d.doc_order) for p in d.field_policies]


def compare_dialects() -> dict[str, type]:
    """`darkroom compare`'s clients by the name --dialect and payloads use."""
    return {d.compare_client.name: d.compare_client for d in sorted(DIALECTS, key=lambda d: d.doc_order)
            if d.compare_client is not None}
