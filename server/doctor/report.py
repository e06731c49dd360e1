"""The doctor's findings as text for people and as JSON for scripts, and the exit status both share."""

from __future__ import annotations

import json
from dataclasses import asdict

from server.doctor.findings import LEVELS, Finding, Level


def render(findings: list[Finding]) -> str:
    """The report as text: sections, then the problems with what to do."""
    marks = {"ok": "  ok   ", "warning": " WARN  ", "error": " ERROR "}
    lines: list[str] = []
    section = None
    for f in findings:
        if f.section != section:
            section = f.section
            lines.append(f"\n{section.upper()}")
        lines.append(f"{marks[f.level]} {f.text}")
    problems = [f for f in findings if f.level != "ok"]
    errors = sum(f.level == "error" for f in problems)
    lines.append(f"\n{errors} error(s) (something configured cannot work), {len(problems) - errors} warning(s) "
                 "(it works, slower or riskier than configured).")
    for f in problems:
        lines.append(f"{marks[f.level]} {f.text}" + (f"\n         → {f.fix}" if f.fix else ""))
    return "\n".join(lines).lstrip("\n")


def worst(findings: list[Finding]) -> Level:
    """The most severe level among `findings`."""
    return max((f.level for f in findings), key=LEVELS.index, default="ok")


def exit_status(findings: list[Finding]) -> int:
    """0 when everything is ok, 1 with warnings, 2 with errors."""
    return LEVELS.index(worst(findings))


def as_json(findings: list[Finding]) -> str:
    """The findings as JSON (for scripts and monitoring), with the same verdict as the exit status."""
    level = worst(findings)
    return json.dumps({"ok": level != "error", "worst": level, "exit_status": LEVELS.index(level),
                       "findings": [asdict(f) for f in findings]}, indent=2)
