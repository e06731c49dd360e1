"""What `darkroom doctor` finds: one finding per line of the report, at a level that says how much it matters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from server.settings import Settings

Level = Literal["ok", "warning", "error"]
LEVELS: tuple[Level, ...] = ("ok", "warning", "error")
"""In order of severity; the exit status is the index of the worst finding."""
GB = 1e9


@dataclass(frozen=True)
class Finding:
    """One line of the report; `fix` says what to do when it is not ok."""

    section: str
    level: Level
    text: str
    fix: str | None = None


class Sink(Protocol):
    """What the checks write to: the settings they judge, and where findings go."""

    settings: Settings

    def add(self, section: str, level: Level, text: str, fix: str | None = None) -> None: ...
