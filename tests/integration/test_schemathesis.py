"""Schemathesis against darkroom's own OpenAPI document, every check, every phase including the stateful
submit -> status -> cancel flows: no 5xx, no response that breaks the documented schema."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, ServerProcess


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    """One model; synchronous requests give up after 1 s (202) and the queue holds 4, so fuzzed jobs that ask for
    4K and 50 steps cannot pile up CPU work behind the run."""
    proc = ServerProcess(tmp_path_factory.mktemp("data") / "fuzz", demo_dir,
                         env={"DARKROOM_MODELS": "vertex/nano-banana-flash", "DARKROOM_SYNC_TIMEOUT_S": "1",
                              "DARKROOM_MAX_QUEUE": "4"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis is in the test extras")
def test_schemathesis_all_checks_all_phases(fuzz_target: ServerProcess) -> None:
    run = subprocess.run(
        ["schemathesis", "--config-file", str(REPO / "schemathesis.toml"), "run",
         f"{fuzz_target.base_url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
         "--max-examples", "2", "--seed", "20261121", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    summary = run.stdout[run.stdout.find("SUMMARY"):]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
    assert "Selected: 31/31" in summary or "Tested: " in summary
