"""/docs (Swagger UI) and /redoc served with their assets from an installed package, so they work offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, which a studio without internet (or one that keeps
its API off the internet on purpose) sees as blank pages. The `fastapi-offline` package ships the same files;
only its static folder is used here.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from server.errors import ApiError, ErrorCode

router = APIRouter(include_in_schema=False)

ASSETS_PREFIX = "/docs-assets/"
_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
           "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
OPEN_PATHS = frozenset({"/docs", "/redoc", "/openapi.json"})
"""Documentation, readable without an API key (it describes the API; it holds no jobs or images)."""


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    """Swagger UI over /openapi.json."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title="darkroom API",
                               swagger_js_url=f"{ASSETS_PREFIX}swagger-ui-bundle.js",
                               swagger_css_url=f"{ASSETS_PREFIX}swagger-ui.css",
                               swagger_favicon_url=f"{ASSETS_PREFIX}favicon.png",
                               # No validator badge: it is an image from validator.swagger.io.
                               swagger_ui_parameters={"validatorUrl": None})


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    """ReDoc over /openapi.json (no web fonts: they would come from a CDN)."""
    return get_redoc_html(openapi_url="/openapi.json", title="darkroom API",
                          redoc_js_url=f"{ASSETS_PREFIX}redoc.standalone.js",
                          redoc_favicon_url=f"{ASSETS_PREFIX}favicon.png", with_google_fonts=False)


# ReDoc's bundle shows Redocly's logo from their CDN in its menu; a page that must work offline (and must not tell
# a third party it was opened) gets an empty image in its place.
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@cache
def _patched(name: str) -> bytes:
    data = (files("fastapi_offline") / "static" / name).read_bytes()
    return data.replace(_REDOC_LOGO, _EMPTY_SVG) if name == "redoc.standalone.js" else data


@router.get(ASSETS_PREFIX + "{name}")
async def asset(name: str) -> Response:
    """One of the pages' files (a fixed list: nothing else of the package is served)."""
    if name not in _ASSETS:
        raise ApiError(404, ErrorCode.NOT_FOUND, "no such file", None)
    return Response(_patched(name), media_type=_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
