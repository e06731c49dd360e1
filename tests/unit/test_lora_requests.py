"""A request's LoRAs checked before anything is fetched: an id whose family takes none is refused naming the ids
that do, and the per-request limits are the service's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pipelines.sdxl import SDXLFamily
from server.asks import LoraRef
from server.errors import ApiError
from server.lora_requests import MAX_LORAS, LoraResolver
from tests.packaged import packaged_config


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on its own thread's loop (an earlier test in the session may leave a loop on this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class _NoLibrary:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the library was consulted ({name}) for a request refused up front")


def test_an_id_whose_family_takes_no_loras_names_those_that_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SDXLFamily, "takes_loras", False)
    resolver = LoraResolver(_NoLibrary(), None, packaged_config().catalog)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as exc:
        _run(resolver.resolve("seedream-4.0", "sdxl", (LoraRef("loras[0]", id="x"),), None))
    assert exc.value.status == 422 and exc.value.code == "unsupported_feature" and exc.value.field == "loras"
    assert "flux-kontext-pro" in exc.value.message and "seedream-4.0" not in exc.value.message.split(":", 1)[1]
    many = tuple(LoraRef(f"loras[{i}]", id="x") for i in range(MAX_LORAS + 1))
    with pytest.raises(ApiError, match=f"at most {MAX_LORAS}"):
        _run(resolver.resolve("flux-kontext-pro", "flux-kontext", many, None))
    assert _run(resolver.resolve("flux-kontext-pro", "flux-kontext", (), None)) == ((), [])
