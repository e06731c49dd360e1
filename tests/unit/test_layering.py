"""The rooms' import rules: HTTP dialects and the scheduler start without torch or diffusers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.parametrize("module", ["server.api.qolaba", "server.api.health", "server.api.files",
                                    "server.engine.scheduler", "server.service", "pipelines.registry",
                                    "weights.demo", "server.api.loras", "server.lora_requests",
                                    "pipelines.lora_format"])
def test_module_imports_without_torch(module: str) -> None:
    code = f"import sys, {module}; bad = [m for m in ('torch', 'diffusers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_pipelines_know_nothing_of_http() -> None:
    code = ("import sys, pipelines.flux_kontext, pipelines.sdxl, pipelines.registry; "
            "print([m for m in ('fastapi', 'starlette', 'server') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
