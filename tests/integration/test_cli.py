"""The `darkroom` command: weights list/pull/demo and the bind-safety refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, free_port
from weights.manifest import load_manifest


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=timeout)


def test_serve_refuses_public_bind_without_key(tmp_path: Path) -> None:
    r = _run(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)], timeout=60)
    assert r.returncode == 2
    assert "without an API key" in r.stderr
    assert "Traceback" not in r.stderr


def test_pull_without_network_is_one_clear_sentence(tmp_path: Path) -> None:
    # A closed loopback port stands in for an unreachable hub; no traffic leaves the machine.
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_HUB_DISABLE_TELEMETRY": "1"}
    r = _run(["weights", "pull", "sdxl-base-1.0", "--data-dir", str(tmp_path)], env=env)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not download stabilityai/")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "weights" / "sdxl-base-1.0" / ".darkroom-lock.json").exists()


def test_pull_unknown_name(tmp_path: Path) -> None:
    r = _run(["weights", "pull", "nope", "--data-dir", str(tmp_path)])
    assert r.returncode == 2 and f"known: {', '.join(sorted(load_manifest()))}" in r.stderr


def test_weights_demo_then_list(tmp_path: Path) -> None:
    r = _run(["weights", "demo", "--data-dir", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    for name in load_manifest():
        index = tmp_path / "demo-weights" / name / "model_index.json"
        assert index.is_file()
        assert not list((tmp_path / "demo-weights" / name).rglob("*.bin"))  # safetensors only
    r = _run(["weights", "list", "--data-dir", str(tmp_path)])
    assert r.returncode == 0
    assert "flux1-kontext-dev" in r.stdout and "demo" in r.stdout and "(unpinned)" in r.stdout
    assert "sdxl-base-1.0        demo     stabilityai/stable-diffusion-xl-base-1.0@f298da3c" in r.stdout


def test_every_setting_is_a_serve_flag() -> None:
    from server.settings import Settings

    r = _run(["serve", "--help"])
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in r.stdout
        assert f"DARKROOM_{name.upper()}" in r.stdout


def test_version_and_typed_flags_with_defaults() -> None:
    r = _run(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("darkroom, version ")
    serve = " ".join(_run(["serve", "--help"]).stdout.split())  # click wraps lines: compare words
    assert "--port INTEGER" in serve and "[default: 8000; env DARKROOM_PORT]" in serve
    assert "--residency-policy [cost_aware|lru|smallest_first]" in serve
    pull = _run(["weights", "pull", "--help"]).stdout
    assert "--data-dir PATH" in pull and "--weights-dir" in pull
    assert "--port" not in pull and "--api-key" not in pull  # only the settings the command reads
    assert "--port" not in _run(["weights", "demo", "--help"]).stdout


def test_doctor_passes_on_the_demo_set(tmp_path: Path, demo_dir: Path) -> None:
    r = _run(["doctor", "--data-dir", str(tmp_path), "--demo-weights-path", str(demo_dir)])
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for section in ("DEVICES", "VERSIONS", "ACCELERATION", "WEIGHTS", "MODELS", "DISK", "NETWORK"):
        assert section in out
    assert "flux-kontext-pro (demo weights): fits on cpu" in out and "sora-2 (demo weights)" in out
    assert "0 problem(s) that stop something configured from working" in out
    assert "Traceback" not in r.stderr


def test_doctor_fails_clearly_when_weights_are_missing_and_demo_is_never(tmp_path: Path) -> None:
    r = _run(["doctor", "--data-dir", str(tmp_path), "--demo", "never", "--models", "flux-kontext-pro", "--json"])
    assert r.returncode == 1
    import json

    report = json.loads(r.stdout)
    fails = [f for f in report["findings"] if f["level"] == "fail"]
    assert report["ok"] is False and len(fails) == 1
    assert fails[0]["text"].startswith("flux-kontext-pro: cannot run: no weights for flux1-kontext-dev")
    assert fails[0]["fix"].startswith("run `darkroom weights pull flux1-kontext-dev`")
    text = _run(["doctor", "--data-dir", str(tmp_path), "--demo", "never", "--models", "flux-kontext-pro"])
    assert text.returncode == 1 and " FAIL  flux-kontext-pro: cannot run" in text.stdout


def test_doctor_fails_on_a_public_bind_without_key(tmp_path: Path, demo_dir: Path) -> None:
    r = _run(["doctor", "--data-dir", str(tmp_path), "--demo-weights-path", str(demo_dir), "--host", "0.0.0.0",
              "--models", "flux-kontext-pro"])
    assert r.returncode == 1 and "without an API key" in r.stdout
