"""Keeps one server process running: restarts it after a GPU fault, a hung worker or a crash.

The supervisor imports nothing heavy and holds no state: jobs live in the database, so a fresh child re-queues
whatever the old one was running and carries on. SIGTERM/SIGINT are passed to the child (which drains) and the
supervisor exits with the child's code. If the supervisor itself is killed, the kernel kills the child too
(PR_SET_PDEATHSIG), so no orphan keeps the port or the data directory.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from server.lifecycle import RESTART_EXIT_CODE

log = logging.getLogger("darkroom.supervisor")

_PR_SET_PDEATHSIG = 1
# A child that lived this long before dying was serving: its next restart starts the back-off afresh.
_HEALTHY_RUN_S = 60.0
_MAX_QUICK_FAILURES = 10


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed supervisor
        pass


def should_restart(returncode: int, stopping: bool) -> bool:
    """Restart after a requested restart (exit 75) or a death by signal/crash we did not ask for."""
    if stopping:
        return False
    return returncode == RESTART_EXIT_CODE or returncode < 0 or returncode not in (0, 1, 2)


def supervise(child_argv: Sequence[str]) -> int:
    """Run `child_argv` until it exits for good; returns the exit code to leave with."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    quick_failures = 0
    backoff = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(list(child_argv), preexec_fn=_die_with_parent)  # noqa: PLW1509 - only sets pdeathsig
        log.info("supervisor: server process %d started", child.pid)
        code = child.wait()
        if not should_restart(code, stopping):
            return 0 if code == 0 or (stopping and code < 0) else code
        lived = time.monotonic() - started
        if lived >= _HEALTHY_RUN_S:
            quick_failures, backoff = 0, 1.0
        else:
            quick_failures += 1
            if quick_failures >= _MAX_QUICK_FAILURES:
                log.error("supervisor: the server failed %d times in a row within %.0f s; giving up",
                          quick_failures, _HEALTHY_RUN_S)
                return 1
        why = "asked for a restart" if code == RESTART_EXIT_CODE else f"died ({_describe(code)})"
        # The first restart after a healthy run is immediate; a crash loop backs off 1, 2, 4 ... 30 s.
        delay = 0.0 if quick_failures <= 1 else backoff
        log.warning("supervisor: server process %d %s; starting a new one in %.1f s", child.pid, why, delay)
        time.sleep(delay)
        if quick_failures:
            backoff = min(backoff * 2, 30.0)
        if stopping:
            return 0


def _describe(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def child_command(argv: Sequence[str]) -> list[str]:
    """The child's command line: the same `serve` arguments, unsupervised, exiting for a restart after a fault."""
    return [sys.executable, "-m", "server", *argv, "--supervise", "false", "--restart-on-fault", "true"]

