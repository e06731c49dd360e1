"""`darkroom doctor`: what this machine and configuration can serve, and what to do about what it cannot.

Reads the same settings and config dir the server would, never starts it and never loads a model: devices and
versions (machine.py); attention backends and fp8 (and which configured backends fall back here), each weights
entry on disk, and whether each served id fits at its default size, in GPU memory and host RAM (serving.py); host
RAM, disk for outputs and weights, shared storage, the bind and auth, and whether the port and the data dir are
free for a server to start (machine.py). Each finding is ok, warning (works, but slower or riskier than
configured) or error (something configured cannot work); the exit status follows the worst: 0, 1 or 2, with
--json too (report.py).
"""

from __future__ import annotations

from server.config import DarkroomConfig
from server.doctor import machine, serving
from server.doctor.findings import LEVELS, Finding, Level
from server.doctor.report import as_json, exit_status, render, worst
from server.settings import Settings

__all__ = ["LEVELS", "Doctor", "Finding", "Level", "as_json", "exit_status", "render", "worst"]


class Doctor:
    """Collects findings for one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.findings: list[Finding] = []

    def add(self, section: str, level: Level, text: str, fix: str | None = None) -> None:
        """Record a finding."""
        self.findings.append(Finding(section, level, text, fix))

    def run(self) -> list[Finding]:
        """Every check, in the order the report prints them."""
        devices = machine.devices(self)
        machine.versions(self)
        config = self.config()
        serving.acceleration(self, devices, config)
        states = serving.weights(self, config)
        serving.models(self, devices, states, config)
        serving.variants(self, devices, states, config)
        machine.memory(self, devices)
        machine.disk(self, states)
        machine.sharing(self)
        machine.network(self)
        machine.start_up(self)
        return self.findings

    def config(self) -> DarkroomConfig | None:
        """The configuration the server would read (None, with an error finding, when it does not load)."""
        e = self.settings.engine
        try:
            return DarkroomConfig.load(e.config_dir, e.license_policy, e.models)
        except (ValueError, OSError, KeyError) as exc:
            self.add("models", "error", f"the configuration in {e.config_dir} does not load: {exc}",
                     "fix the file it names")
            return None
