"""Serves the studio: `/` (the page) and `/studio/<file>` (its scripts and styles, a fixed set shipped in this
package). No CDN, no build step, nothing fetched at run time: the page works offline.

The page and its files are readable without an API key (they hold no data); the page asks for the key when the
API answers 401, keeps it in sessionStorage and sends it on every call.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.errors import ApiError, ErrorCode

router = APIRouter(include_in_schema=False)

PREFIX = "/studio/"
OPEN_PATHS = frozenset({"/", "/favicon.ico"})
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
_STATIC = files("server.studio") / "static"


def _asset(name: str) -> FileResponse:
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    path = _STATIC / name
    if "/" in name or suffix not in _TYPES or not path.is_file():
        raise ApiError(404, ErrorCode.NOT_FOUND, "no such file", None)
    return FileResponse(str(path), media_type=_TYPES[suffix], headers={"Cache-Control": "no-cache"})


@router.get("/")
async def studio_page() -> FileResponse:
    """The studio."""
    return _asset("index.html")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    """The studio's icon, where browsers look for it unasked (no 404 on every load)."""
    return _asset("favicon.svg")


@router.get(PREFIX + "{name}")
async def studio_asset(name: str) -> FileResponse:
    """One of the studio's files."""
    return _asset(name)
