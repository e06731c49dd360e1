"""The OpenAPI document says what each route can really answer: only its own errors, each with an example body in
its dialect's shape; one section per dialect, darkroom's own first; a unique operation id and summary each."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import API_KEY
from tests.support import ServerProcess


def _doc(srv: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{srv.base_url}/openapi.json", timeout=30).json()


def _errors(doc: dict[str, Any], path: str, method: str) -> dict[str, set[str]]:
    responses = doc["paths"][path][method]["responses"]
    return {status: set(r["content"]["application/json"].get("examples", {}))
            for status, r in responses.items() if status[0] in "45"}


def test_each_route_lists_only_its_own_errors(keyed_server: ServerProcess, server: ServerProcess) -> None:
    keyed, open_ = _doc(keyed_server), _doc(server)
    assert _errors(keyed, "/health", "get") == {}  # open, touches nothing: cannot fail
    assert set(_errors(open_, "/api/v1/tasks/{task_id}", "get")) == {"404", "422", "503"}  # no 401 without keys
    task = _errors(keyed, "/api/v1/tasks/{task_id}", "get")
    assert task["401"] == {"unauthorized"} and task["404"] == {"not_found"} and "409" not in task and "413" not in task
    cancel = _errors(keyed, "/api/v1/tasks/{task_id}/cancel", "post")
    assert cancel["409"] == {"already_finished"}
    delete = _errors(keyed, "/api/v1/tasks/{task_id}", "delete")
    assert delete["409"] == {"not_finished"}
    submit = _errors(keyed, "/api/v1/images/generate", "post")
    assert {"queue_full", "quota_exceeded", "rate_limited"} <= submit["429"]
    assert submit["503"] == {"shutting_down", "store_busy"} and submit["507"] == {"storage_full"}
    assert {"unknown_model", "unsupported_quality", "insufficient_vram"} <= submit["422"]
    assert "410" not in submit and _errors(keyed, "/files/{name}", "get")["410"] == {"expired"}


def test_examples_are_real_bodies_in_the_dialects_shape(keyed_server: ServerProcess) -> None:
    doc = _doc(keyed_server)

    def example(path: str, method: str, status: str, code: str) -> Any:
        return doc["paths"][path][method]["responses"][status]["content"]["application/json"]["examples"][code][
            "value"]

    native = example("/api/v1/tasks/{task_id}", "get", "401", "unauthorized")
    unauthorized = httpx.get(f"{keyed_server.base_url}/api/v1/tasks/x").json()
    assert native == unauthorized  # the very body the server answers with
    fal = example("/fal-ai/{model_path}", "post", "422", "unknown_model")
    assert fal["error"]["code"] == "unknown_model" and fal["detail"][0]["type"] == "unknown_model"
    assert example("/v1/get_result", "get", "404", "not_found")["status"] == "Task not found"
    assert httpx.get(f"{keyed_server.base_url}/v1/get_result", params={"id": "nope"},
                     headers={"x-key": API_KEY}).json()["status"] == "Task not found"


def test_sections_ids_and_summaries(server: ServerProcess) -> None:
    doc = _doc(server)
    assert [t["name"] for t in doc["tags"]] == ["darkroom", "OpenAI", "fal", "Replicate", "Black Forest Labs",
                                                 "Gemini", "Veo", "files", "operations"]
    ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert next(iter(doc["paths"])).startswith("/api/v1/")  # darkroom's own API opens the reference
    ids = [op["operationId"] for _p, _m, op in ops]
    summaries = [op["summary"] for _p, _m, op in ops]
    assert len(ids) == len(set(ids)) and len(summaries) == len(set(summaries))
    tags = {path: op["tags"] for path, _m, op in ops}
    assert tags["/health"] == ["operations"] and tags["/v1/images/generations"] == ["OpenAI"]
    assert tags["/v1beta/models/{model}:generateContent"] == tags["/v1/models/{model}:generateContent"] == ["Gemini"]
    assert all(len(t) == 1 and t[0] != "default" for t in tags.values())


def test_every_reference_resolves(server: ServerProcess) -> None:
    """Each `$ref` points inside the document (an embedded pydantic schema's `#/$defs/...` would not: ReDoc stops
    rendering at the first one)."""
    doc = _doc(server)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    for ref in refs:
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} points nowhere"
            target = target[part]
    assert any("LoraItem" in json.dumps(op) for op in doc["paths"]["/api/v1/images/generate"].values())
