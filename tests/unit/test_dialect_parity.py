"""Every field of every provider dialect is mapped, warned or refused — and the docs table says which."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.api.parity import parity_markdown
from server.api.registry import DIALECTS, field_policies

POLICIES = {p.title: p for p in field_policies()}


@pytest.mark.parametrize("title", sorted(t for t, p in POLICIES.items() if p.model is not None))
def test_every_request_field_has_a_policy(title: str) -> None:
    policy = POLICIES[title]
    assert policy.model is not None
    fields = set(policy.model.model_fields) | policy.multipart_fields
    assert fields == set(policy.fields), f"{title}: fields without policy {fields - set(policy.fields)}, " \
                                         f"policy without field {set(policy.fields) - fields}"
    assert policy.model.model_config.get("extra") == "forbid"  # anything else is refused as unknown_field


def test_every_policy_is_mapped_warned_or_refused() -> None:
    for policy in POLICIES.values():
        for field, how in policy.fields.items():
            assert how.split(":")[0].split(" ")[0] in ("mapped", "warned", "refused"), (policy.title, field, how)


def test_the_registry_finds_every_dialect_module_and_derives_from_them() -> None:
    from server.api.registry import compare_dialects, cors_headers, key_headers

    assert [d.name for d in DIALECTS] == ["gemini", "veo", "fal", "replicate", "bfl", "openai", "darkroom"]
    headers, schemes = key_headers()
    assert headers == ("x-api-key", "x-goog-api-key", "x-key") and schemes == ("bearer", "key", "token")
    allow, expose = cors_headers()
    assert {"Idempotency-Key", "Prefer", "x-key"} <= set(allow) and "x-fal-request-id" in expose
    assert list(compare_dialects()) == ["qolaba", "openai", "fal", "replicate", "bfl", "gemini"]


def test_docs_table_is_current() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "dialects.md"
    assert doc.read_text() == parity_markdown(), "run: python -m server.api.parity > docs/dialects.md"
