"""Every field of every provider dialect is mapped, warned or refused — and the docs table says which."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.api import bfl, fal, openai_api, replicate
from server.api.parity import DIALECTS, parity_markdown

MODELS = {
    "OpenAI images": (openai_api.GenerationsBody, {"image", "mask"}),
    "OpenAI videos": (openai_api.VideoBody, set()),
    "fal": (fal.FalBody, set()),
    "Replicate": (replicate.ReplicateInput, set()),
    "Black Forest Labs": (bfl.BflBody, set()),
}


@pytest.mark.parametrize("dialect", sorted(MODELS))
def test_every_request_field_has_a_policy(dialect: str) -> None:
    model, multipart_only = MODELS[dialect]
    policy = DIALECTS[dialect][1]
    fields = set(model.model_fields) | multipart_only
    assert fields == set(policy), f"{dialect}: fields without policy {fields - set(policy)}, " \
                                  f"policy without field {set(policy) - fields}"
    assert model.model_config.get("extra") == "forbid"  # anything else is refused as unknown_field


def test_every_policy_is_mapped_warned_or_refused() -> None:
    for name, (_routes, policy) in DIALECTS.items():
        for field, how in policy.items():
            assert how.split(":")[0].split(" ")[0] in ("mapped", "warned", "refused"), (name, field, how)


def test_docs_table_is_current() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "dialects.md"
    assert doc.read_text() == parity_markdown(), "run: python -m server.api.parity > docs/dialects.md"
