"""Start a real `darkroom serve` on a free loopback port (shared by benchmarks and tests)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m server serve` on a free loopback port with its own data dir."""

    def __init__(self, data_dir: Path, demo_dir: Path | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
        full_env.update({"DARKROOM_DATA_DIR": str(data_dir), "DARKROOM_PORT": str(self.port),
                         "PYTHONUNBUFFERED": "1", "DARKROOM_DRAIN_TIMEOUT_S": "2"})
        if demo_dir is not None:
            full_env["DARKROOM_DEMO_WEIGHTS_PATH"] = str(demo_dir)
        full_env.update(env or {})
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "serve", *(args or [])], cwd=REPO,
                                     env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0, headers: dict[str, str] | None = None) -> float:
        """Block until /ready answers 200; returns seconds since start (fails with the server's log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/ready", headers=headers, timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def wait_listening(self, timeout: float = 120.0) -> float:
        """Block until /health answers; returns seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"server not listening after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """The tail of what the server printed."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for this server."""
        return httpx.Client(base_url=self.base_url, timeout=120, **kwargs)


def environment() -> dict[str, Any]:
    """Machine and package versions recorded with every result."""
    import torch

    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "versions": {p: version(p) for p in ("torch", "diffusers", "transformers", "fastapi", "uvicorn")},
    }


def write_result(device_dir: str, name: str, payload: dict[str, Any]) -> Path:
    """Write JSON under benchmarks/results/<device_dir>/<name>.json with the command line and environment."""
    out = RESULTS / device_dir / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "environment": environment(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    out.write_text(json.dumps(body, indent=2) + "\n")
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]
