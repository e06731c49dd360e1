"""`darkroom compare`'s parts that need no server: the payload file (JSONL and YAML, with errors that say where),
the dated price table and its lookup, the local GPU cost, busy time and percentiles; and the weights pull's file
plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import DryRunFileInfo

from compare.payloads import PayloadError, load_payloads
from compare.prices import GpuCost, PriceTable
from compare.stats import busy_seconds, percentiles
from tests.packaged import packaged_config
from weights.pull import describe_plan


def test_jsonl_and_yaml_payloads(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "p.jsonl").write_text("# comment\n" + json.dumps(
        {"model": "flux-kontext-pro", "prompt": "x", "images": ["a.png"], "params": {"quality": "1K"}}) + "\n\n" +
        json.dumps({"id": "two", "model": "gpt-image-1", "prompt": "y", "dialect": "openai", "tier": "low"}) + "\n")
    first, second = load_payloads(tmp_path / "p.jsonl")
    assert first.id == "p001" and first.images == (str(tmp_path / "a.png"),) and first.price_tier() == "1K"
    assert second.id == "two" and second.dialect == "openai" and second.price_tier() == "low"
    (tmp_path / "p.yaml").write_text("payloads:\n  - model: m\n    prompt: hi\n    images: [https://example.com/a.png]\n")
    (only,) = load_payloads(tmp_path / "p.yaml")
    assert only.images == ("https://example.com/a.png",)


@pytest.mark.parametrize(("text", "message"), [
    ('{"model": "m"}\n', "p.jsonl:1: prompt"),
    ('{"model": "m", "prompt": "x"}\nnot json\n', "p.jsonl:2: not JSON"),
    ('{"model": "m", "prompt": "x", "images": ["missing.png"]}\n', "is not a file"),
    ('{"model": "m", "prompt": "x", "dialect": "midjourney"}\n', "dialect"),
    ('{"model": "m", "prompt": "x", "colour": "red"}\n', "colour"),
    ('{"id": "a", "model": "m", "prompt": "x"}\n{"id": "a", "model": "m", "prompt": "y"}\n', "appears twice"),
    ('{"id": "../etc", "model": "m", "prompt": "x"}\n', "id may hold"),
    ("", "holds no payloads"),
])
def test_payload_errors_say_where_and_what(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.jsonl").write_text(text)
    with pytest.raises(PayloadError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_payloads(tmp_path / "p.jsonl")


def test_price_table_is_dated_sourced_and_looked_up_by_tier() -> None:
    table = packaged_config().prices
    assert table.rows and all(r.as_of and r.source for r in table.rows)
    assert table.find("openai", "gpt-image-1", "low").usd == 0.011  # type: ignore[union-attr]
    assert table.find("openai", "gpt-image-1", "auto").tier == "*"  # type: ignore[union-attr]
    assert table.find("qolaba", "vertex/nano-banana-pro", "2K").usd == 0.161  # type: ignore[union-attr]
    assert table.find("qolaba", "sora-2", None).per == "second"  # type: ignore[union-attr]
    assert table.find("qolaba", "no-such-model", "1K") is None


def test_price_rows_need_a_date_and_source(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('[[price]]\ndialect = "x"\nmodel = "m"\nusd = 1.0\nper = "image"\n'
                                     'as_of = "yesterday"\nsource = "s"\n')
    with pytest.raises(ValueError, match="price #1: as_of"):
        PriceTable.load(tmp_path / "p.toml")


def test_gpu_cost_with_and_without_electricity() -> None:
    assert GpuCost(None).usd_for(3600) is None
    assert GpuCost(2.0, gpus=2).usd_for(1800) == pytest.approx(2.0)
    # 700 W for an hour at $0.20/kWh adds $0.14 per GPU.
    assert GpuCost(2.0, gpus=1, watts=700, usd_per_kwh=0.2).usd_for(3600) == pytest.approx(2.14)
    assert "700 W" in GpuCost(2.0, watts=700, usd_per_kwh=0.2).describe()


def test_busy_seconds_merges_overlaps_and_skips_gaps() -> None:
    spans = [{"started_at": 0.0, "latency_s": 2.0}, {"started_at": 1.0, "latency_s": 2.0},
             {"started_at": 10.0, "latency_s": 1.0}, {"started_at": 10.2, "latency_s": 0.3}]
    assert busy_seconds(spans) == pytest.approx(4.0)
    assert busy_seconds([]) == 0.0


def test_percentiles() -> None:
    p = percentiles([float(i) for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05) and p["max"] == 100.0
    assert percentiles([])["p50"] is None


def test_pull_plan_lists_files_and_sizes() -> None:
    plan = [DryRunFileInfo(commit_hash="c" * 40, file_size=2_000_000_000, filename="transformer/a.safetensors",
                           local_path="/x", is_cached=False, will_download=True),
            DryRunFileInfo(commit_hash="c" * 40, file_size=500_000, filename="model_index.json", local_path="/y",
                           is_cached=True, will_download=False)]
    text = describe_plan("org/repo", "c" * 40, plan)
    assert text.splitlines()[0] == "org/repo@cccccccccccc: 2 files, 2.00 GB to download"
    assert "2000.0 MB  transformer/a.safetensors" in text and "model_index.json  (already here)" in text
