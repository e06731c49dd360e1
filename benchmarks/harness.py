"""Start a real `darkroom serve` on a free loopback port (shared by benchmarks and tests)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
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


def wait_or_kill(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """Wait for a process already asked to stop; SIGKILL it if it is still there after `grace_s`."""
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


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
                         "PYTHONUNBUFFERED": "1", "DARKROOM_DRAIN_TIMEOUT_S": "0.5"})
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

    def server_pid(self) -> int | None:
        """Pid of the serving process: the supervisor's child (Linux /proc), or None between restarts."""
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def wait_new_server(self, other_than: int | None, timeout: float = 60.0) -> int:
        """Block until a serving process other than `other_than` runs; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.server_pid()
            if pid is not None and pid != other_than:
                return pid
            time.sleep(0.05)
        raise RuntimeError(f"no new server process after {timeout}s:\n{self.log()}")

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the serving process so far, in MiB."""
        pid = self.server_pid()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def log(self) -> str:
        """The tail of what the server printed."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        self.proc.terminate()
        wait_or_kill(self.proc)
        self._log.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for this server."""
        return httpx.Client(base_url=self.base_url, timeout=120, **kwargs)


def submit_through_kills(proc: ServerProcess, bodies: list[dict[str, Any]], kills: int, rng: Any,
                         unexpected: list[str], gap_s: tuple[float, float] = (0.5, 2.5)) -> dict[str, str]:
    """Submit `bodies` (each retried with its own Idempotency-Key until accepted, as a careful client does) while
    the serving process is SIGKILLed `kills` times, `gap_s` apart (uniform), and the supervisor restarts it.
    Returns {idempotency key: task id}; answers other than 202/503 are appended to `unexpected`."""
    import os
    import signal
    import threading

    accepted: dict[str, str] = {}

    def submit_all() -> None:
        for i, body in enumerate(bodies):
            key = f"crash-{i}"
            while key not in accepted:
                try:
                    r = httpx.post(f"{proc.base_url}/api/v1/images/generate", json=body, timeout=10,
                                   headers={"Idempotency-Key": key})
                    if r.status_code == 202:
                        accepted[key] = r.json()["task_id"]
                        continue
                    if r.status_code != 503:  # 503 only while a restarted process warms up
                        unexpected.append(f"{r.status_code} {r.text[:200]}")
                except httpx.TransportError:
                    pass  # killed mid-request: retry with the same key
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 0.3))

    submitter = threading.Thread(target=submit_all)
    submitter.start()
    pid = proc.wait_new_server(None)
    for _ in range(kills):
        time.sleep(rng.uniform(*gap_s))
        os.kill(pid, signal.SIGKILL)
        pid = proc.wait_new_server(pid)
        proc.wait_ready()
    submitter.join(300)
    return accepted


def job_rows(data_dir: Path) -> dict[str, Any]:
    """Every job row of a server's database (read-only; safe while it runs), by id."""
    import sqlite3

    conn = sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {r["id"]: r for r in conn.execute("SELECT id, status, finishes, attempts, result FROM jobs")}
    finally:
        conn.close()


def environment() -> dict[str, Any]:
    """Machine and package versions recorded with every result."""
    import torch

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:  # a GPU machine runs the benchmarks without the server's packages
            return None

    gpu = torch.cuda.is_available()
    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "cuda": torch.version.cuda if gpu else None,
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if gpu else None,
        "versions": {p: installed(p) for p in ("torch", "diffusers", "transformers", "torchao", "fastapi", "uvicorn")},
    }


def write_result(device_dir: str, name: str, payload: dict[str, Any], root: Path = RESULTS) -> Path:
    """Write JSON under <root>/<device_dir>/<name>.json (root: benchmarks/results) with the command line and
    environment."""
    out = root / device_dir / f"{name}.json"
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
