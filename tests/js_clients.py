"""The providers' own JavaScript SDKs (tests/js/package.json, exact versions, package-lock.json) installed once with
npm from the registry and run with the machine's Node.js against a darkroom on loopback, unchanged but for their
base URL."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support import REPO

JS = REPO / "tests" / "js"


def install() -> str | None:
    """Install the SDKs when missing; None when ready, else why they cannot run here."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js and npm are not installed"
    wanted = json.loads((JS / "package.json").read_text())["dependencies"]
    if all((JS / "node_modules" / name / "package.json").is_file() for name in wanted):
        return None
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS, capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        return f"npm ci failed: {done.stderr[-500:]}"
    return None


def run(script: str, env: dict[str, str], timeout: float = 120.0) -> Any:
    """Run an ES module `script` in tests/js with `env`; the JSON it prints last, or AssertionError with its output."""
    done = subprocess.run(["node", "--input-type=module", "-e", script], cwd=JS, capture_output=True, text=True,
                          timeout=timeout, check=False, env={"PATH": "/usr/bin:/bin:/usr/local/bin", **env})
    if done.returncode != 0:
        raise AssertionError(f"node exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def here() -> Path:
    """The folder the scripts run in (their node_modules)."""
    return JS
