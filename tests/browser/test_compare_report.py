"""`darkroom compare` against two real darkroom servers on loopback (the open one plays the hosted side), over the
Qolaba and OpenAI dialects, with a failure only one side answers: the report's numbers, its costs from the
configured price table, resuming, and the HTML opening in Chromium with every image inline; and a side whose key
is wrong, stopped after three refusals with no made-up figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.browser.conftest import artifact
from tests.conftest import API_KEY
from tests.support import REPO, ServerProcess

PRICES = """
[[price]]
dialect = "qolaba"
model = "flux-kontext-pro"
tier = "*"
usd = 0.125
per = "image"
as_of = "2026-12-01"
source = "test table"

[[price]]
dialect = "openai"
model = "gpt-image-1-mini"
tier = "low"
usd = 0.0625
per = "image"
as_of = "2026-12-01"
source = "test table"
"""


def _payloads(folder: Path) -> Path:
    Image.new("RGB", (96, 64), (200, 40, 40)).save(folder / "red.png")
    # Over the keyed server's 200 kB image limit, within the open one's: fails on side B only.
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    fast = {"quality": "512", "num_inference_steps": 1}
    items = [
        {"id": "q-edit", "model": "flux-kontext-pro", "prompt": "make it blue", "images": ["red.png"], "params": fast},
        {"id": "q-edit-2", "model": "flux-kontext-pro", "prompt": "make it gold", "images": ["red.png"],
         "params": {**fast, "aspect_ratio": "1:1"}},
        {"id": "q-too-big", "model": "flux-kontext-pro", "prompt": "noise", "images": ["noise.png"], "params": fast},
        {"id": "o-edit", "dialect": "openai", "model": "gpt-image-1-mini", "prompt": "make it green",
         "images": ["red.png"], "params": {"quality": "low", "size": "1024x1024"}},
        {"id": "o-gen", "dialect": "openai", "model": "gpt-image-1-mini", "prompt": "a lighthouse",
         "params": {"quality": "low", "size": "1024x1024"}},
        {"id": "o-edit-2", "dialect": "openai", "model": "gpt-image-1-mini", "prompt": "at dusk", "images": ["red.png"],
         "params": {"quality": "low", "size": "1024x1024"}},
    ]
    path = folder / "payloads.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return path


def _compare(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMPARE_B_KEY": API_KEY}
    return subprocess.run([sys.executable, "-m", "server", "compare", *args, "--no-progress"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_compare_two_servers_report(server: ServerProcess, keyed_server: ServerProcess, tmp_path: Path,
                                    page: Any) -> None:
    payloads = _payloads(tmp_path)
    (tmp_path / "prices.toml").write_text(PRICES)
    out = tmp_path / "run"
    args = ["--payloads", str(payloads), "--a", server.base_url, "--b", keyed_server.base_url,
            "--b-key", "COMPARE_B_KEY", "--out", str(out), "--prices", str(tmp_path / "prices.toml"),
            "--gpu-usd-per-hour", "3.6", "--concurrency", "2", "--timeout", "300"]
    r = _compare(args)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    attempts = report["attempts"]
    assert {(a["payload"], a["side"]) for a in attempts} == {(p, s) for p in ("q-edit", "q-edit-2", "q-too-big",
                                                                               "o-edit", "o-gen", "o-edit-2")
                                                             for s in ("a", "b")}
    # The injected failure is counted on its side with its code, and nothing else failed.
    failed = [(a["payload"], a["side"], a["status_code"], a["error_code"]) for a in attempts if not a["ok"]]
    assert failed == [("q-too-big", "b", 413, "image_too_large")]
    a, b = report["sides"]["a"]["summary"], report["sides"]["b"]["summary"]
    assert (a["ok"], a["failed"], b["ok"], b["failed"]) == (6, 0, 5, 1)
    assert b["errors"] == {"413 image_too_large": 1} and b["failure_rate"] == round(1 / 6, 4)
    for side in (a, b):
        lat = side["latency_s"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    # Qolaba polls a task: it has a first-progress time; OpenAI answers in one response: it has none.
    assert all(x["first_progress_s"] is not None for x in attempts if x["dialect"] == "qolaba" and x["ok"])
    assert all(x["first_progress_s"] is None for x in attempts if x["dialect"] == "openai")
    # Side A is priced from the configured table: 3 Kontext images at 0.125 and 3 GPT Image mini (low) at 0.0625.
    assert a["cost"]["basis"] == "price table" and a["cost"]["total_usd"] == 3 * 0.125 + 3 * 0.0625
    assert {row["source"] for row in a["cost"]["rows"]} == {"test table"}
    # Side B costs GPU time: $3.6/h is $0.001 per busy second.
    assert abs(b["cost"]["total_usd"] - b["busy_s"] * 0.001) < 2e-4 and b["cost"]["usd_per_image"] > 0
    # What ran each id on the darkroom sides, and every saved output decodes at its recorded size.
    assert "flux-kontext" in report["sides"]["b"]["ran_on"]["flux-kontext-pro"][0]
    for x in attempts:
        for o in x["outputs"]:
            with Image.open(out / o["file"]) as im:
                assert im.size == (o["width"], o["height"])

    # A re-run resumes: nothing is sent again, so no record is added.
    lines = (out / "results.jsonl").read_text().count("\n")
    r = _compare(args)
    assert r.returncode == 0 and (out / "results.jsonl").read_text().count("\n") == lines

    # The HTML is self-contained: it opens from disk with every image inline and nothing fetched.
    fetched: list[str] = []
    page.on("request", lambda req: fetched.append(req.url))
    page.goto((out / "report.html").as_uri())
    assert {u.split(":", 1)[0] for u in fetched} == {"file"}
    sources = page.eval_on_selector_all("img", "els => els.map(e => [e.src.slice(0, 11), e.naturalWidth])")
    assert len(sources) >= 11 + 4 and all(src == "data:image/" and width > 0 for src, width in sources)
    assert page.locator("svg").count() >= 1
    assert page.locator("tr#payload-q-too-big").inner_text().count("image_too_large") == 1
    page.screenshot(path=artifact("compare-report.png"), full_page=True)


def test_a_side_with_a_wrong_key_is_stopped_early_and_shows_no_figures(server: ServerProcess,
                                                                       keyed_server: ServerProcess,
                                                                       tmp_path: Path) -> None:
    items = [{"id": f"g{i}", "model": "flux-kontext-pro", "prompt": f"a kite {i}",
              "params": {"quality": "512", "num_inference_steps": 1}} for i in range(8)]
    payloads = tmp_path / "payloads.jsonl"
    payloads.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "server", "compare", "--payloads", str(payloads), "--a",
                        server.base_url, "--b", keyed_server.base_url, "--b-key", "WRONG_KEY", "--out", str(out),
                        "--concurrency", "1", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                       timeout=600, check=False, env={**os.environ, "WRONG_KEY": "not-the-key-0123456789"})
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    sent = [a for a in report["attempts"] if a["side"] == "b" and a["error_code"] != "not_sent"]
    held = [a for a in report["attempts"] if a["side"] == "b" and a["error_code"] == "not_sent"]
    assert len(sent) == 3 and all(a["status_code"] == 401 for a in sent) and len(held) == 5
    stopped = report["sides"]["b"]["environment"]["stopped"]
    assert "3 requests in a row were refused with 401" in stopped and "key" in stopped
    b_line = next(line for line in r.stdout.splitlines() if line.strip().startswith("darkroom:") and "ok," in line)
    assert "0/8 ok, p50 —, p95 —, — per output" in b_line, r.stdout
    assert "stopped after 3 requests" in r.stdout and "0.00 s" not in b_line
    assert report["sides"]["a"]["summary"]["ok"] == 8
