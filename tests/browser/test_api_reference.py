"""/docs and /redoc render darkroom's API reference in Chromium from this server alone: every request the pages
make goes to the server itself (no CDN, no logo, no validator badge), and the operations come in their dialect's
section, darkroom's own first."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.browser.conftest import artifact
from tests.support import ServerProcess


def _requests_of(page: Any) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    return seen


def test_swagger_ui_loads_nothing_from_elsewhere_and_groups_by_dialect(page: Any, server: ServerProcess) -> None:
    seen = _requests_of(page)
    page.goto(f"{server.base_url}/docs")
    page.wait_for_selector(".opblock-tag-section")
    tags = page.locator(".opblock-tag").all_inner_texts()
    assert [t.split("\n")[0] for t in tags[:3]] == ["darkroom", "OpenAI", "fal"], tags
    assert "default" not in [t.split("\n")[0] for t in tags]
    page.screenshot(path=artifact("api-reference-docs.png"))
    outside = [u for u in seen if urlsplit(u).hostname not in ("127.0.0.1", None) and not u.startswith("data:")]
    assert not outside, outside


def test_redoc_loads_nothing_from_elsewhere(page: Any, server: ServerProcess) -> None:
    seen = _requests_of(page)
    page.goto(f"{server.base_url}/redoc")
    page.wait_for_selector("text=darkroom", timeout=60_000)
    page.wait_for_timeout(1500)  # the menu's images load after the first paint
    page.screenshot(path=artifact("api-reference-redoc.png"))
    outside = [u for u in seen if urlsplit(u).hostname not in ("127.0.0.1", None) and not u.startswith("data:")]
    assert not outside, outside
