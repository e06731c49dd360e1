"""The `darkroom` command: weights list/pull/demo and the bind-safety refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.packaged import packaged_config
from tests.support import REPO, free_port


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


def test_pull_of_a_variant_offline_and_of_one_made_at_load(tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_HUB_DISABLE_TELEMETRY": "1"}
    r = _run(["weights", "pull", "flux1-kontext-dev", "--variant", "gguf_q4_k", "--data-dir", str(tmp_path)], env=env)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: could not download unsloth/FLUX.1-Kontext-dev-GGUF")
    lock = tmp_path / "weights" / "flux1-kontext-dev" / "variants" / "gguf_q4_k" / ".darkroom-lock.json"
    assert not lock.exists()
    r = _run(["weights", "pull", "flux1-kontext-dev", "--variant", "int8_weight", "--data-dir", str(tmp_path)])
    assert r.returncode == 1 and "made at load, nothing to pull" in r.stderr and "Traceback" not in r.stderr


def test_pull_unknown_name(tmp_path: Path) -> None:
    r = _run(["weights", "pull", "nope", "--data-dir", str(tmp_path)])
    assert r.returncode == 2 and f"known: {', '.join(sorted(packaged_config().manifest))}" in r.stderr


def test_weights_demo_then_list(tmp_path: Path) -> None:
    r = _run(["weights", "demo", "--data-dir", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    for name in packaged_config().manifest:
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
    for name in Settings.fields():
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


def test_doctor_on_the_demo_set_works_with_warnings_about_the_cpu(tmp_path: Path, demo_dir: Path) -> None:
    r = _run(["doctor", "--data-dir", str(tmp_path), "--demo-weights-path", str(demo_dir)])
    out = r.stdout
    assert r.returncode == 1, out + r.stderr  # the worst finding is a warning: no GPU, attention falls back
    for section in ("DEVICES", "VERSIONS", "ACCELERATION", "WEIGHTS", "MODELS", "MEMORY", "DISK", "NETWORK",
                    "START-UP"):
        assert section in out
    assert "flux-kontext-pro (demo weights): fits on cpu" in out and "of RAM" in out and "sora-2 (demo weights)" in out
    assert "VARIANTS" in out and "flux-kontext-max on cpu (CPU): bf16, resident" in out
    assert "weight variants that can load here: bf16, int8_weight, gguf_q8_0" in out
    assert "0 error(s)" in out and " WARN   cpu: no CUDA device" in out
    assert "ask for _flash_3 attention first, which is not usable here" in out  # a fallback is not "ok"
    assert " ok    port 8000 on 127.0.0.1 is free" in out
    assert "Traceback" not in r.stderr


def test_doctor_notices_a_server_already_holding_the_port_and_the_data_dir(tmp_path: Path, demo_dir: Path) -> None:
    import json
    import socket

    from server.jobs.lock import DataDirLock

    lock = DataDirLock(tmp_path)
    lock.acquire()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = _run(["doctor", "--data-dir", str(tmp_path), "--demo-weights-path", str(demo_dir), "--port", str(port),
                  "--models", "flux-kontext-pro", "--json"])
    lock.release()
    report = json.loads(r.stdout)
    errors = [f for f in report["findings"] if f["level"] == "error"]
    assert r.returncode == 2 == report["exit_status"] and report["worst"] == "error" and report["ok"] is False
    assert {f["section"] for f in errors} == {"start-up"}, errors
    assert any(f"port {port} on 127.0.0.1 is already in use" in f["text"] for f in errors)
    assert any(f"in use by another darkroom server (pid {os.getpid()})" in f["text"] for f in errors)


def test_doctor_fails_clearly_when_weights_are_missing_and_demo_is_never(tmp_path: Path) -> None:
    r = _run(["doctor", "--data-dir", str(tmp_path), "--demo", "never", "--models", "flux-kontext-pro", "--json"])
    assert r.returncode == 2
    import json

    report = json.loads(r.stdout)
    fails = [f for f in report["findings"] if f["level"] == "error"]
    assert report["ok"] is False and len(fails) == 1
    assert fails[0]["text"].startswith("flux-kontext-pro: cannot run: no weights for flux1-kontext-dev")
    assert fails[0]["fix"].startswith("run `darkroom weights pull flux1-kontext-dev`")
    text = _run(["doctor", "--data-dir", str(tmp_path), "--demo", "never", "--models", "flux-kontext-pro"])
    assert text.returncode == 2 and " ERROR  flux-kontext-pro: cannot run" in text.stdout


def test_doctor_fails_on_a_public_bind_without_key(tmp_path: Path, demo_dir: Path) -> None:
    r = _run(["doctor", "--data-dir", str(tmp_path), "--demo-weights-path", str(demo_dir), "--host", "0.0.0.0",
              "--models", "flux-kontext-pro"])
    assert r.returncode == 2 and "without an API key" in r.stdout


def test_loras_pull_needs_the_folder_and_fails_cleanly_offline(tmp_path: Path) -> None:
    r = _run(["loras", "pull", "someone/style-lora"])
    assert r.returncode == 2 and "--lora-dir" in r.stderr
    r = _run(["loras", "pull", "someone/style-lora", "--lora-dir", str(tmp_path)], env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())
