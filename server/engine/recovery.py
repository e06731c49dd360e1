"""How the engine carries on after a failure around a render: which jobs are tried again and when, and the pause
that keeps workers from rendering while nothing they make could be stored.

A failure while preparing or recording a job (an input gone, the job store locked, the bucket failing) gives the
job back to the queue with a growing delay, at most `max_attempts` times, then fails it with the fault's code.
A full disk is the machine's problem, not the job's: the job goes back without spending an attempt and the engine
stops claiming until a probe write succeeds again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.faults import Fault, classify

if TYPE_CHECKING:
    from server.settings import EngineSettings

log = logging.getLogger("darkroom.engine")


@dataclass(frozen=True)
class FaultPolicy:
    """How patiently the engine retries around renders."""

    max_attempts: int = 3
    """Failures around a job's render (reading its inputs, storing its outputs) before it fails for good."""
    backoff_s: float = 2.0
    """Delay before the first retry; it doubles with each failure, up to `backoff_cap_s`."""
    backoff_cap_s: float = 60.0
    no_worker_grace_s: float = 60.0
    """How long the engine may have no worker thread running before it asks for a process restart."""

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1-based)."""
        return min(self.backoff_cap_s, self.backoff_s * 2 ** max(0, failures - 1))

    @classmethod
    def of(cls, settings: EngineSettings) -> FaultPolicy:
        """The policy the engine settings ask for."""
        return cls(settings.job_max_attempts, settings.job_retry_backoff_s,
                   no_worker_grace_s=settings.no_worker_grace_s)


_PROBE_CAP_S = 10.0
"""Longest wait between two probes: once space is freed, jobs start again within this."""


class StorageGate:
    """Closed while storage is full: workers claim nothing until `probe` (a small write) succeeds. Probes are
    spaced by the policy's backoff (at most `_PROBE_CAP_S` apart), so a full disk costs one tiny write every few
    seconds, not a render each."""

    def __init__(self, probe: Callable[[], None] | None, policy: FaultPolicy) -> None:
        self.probe = probe
        self.policy = policy
        self._lock = threading.Lock()
        self._closed_by: Fault | None = None
        self._failures = 0
        self._next_probe = 0.0

    @property
    def closed_by(self) -> Fault | None:
        """The fault that closed the gate, or None while open."""
        return self._closed_by

    def close(self, fault: Fault) -> None:
        """Storage is full: stop claiming until a probe succeeds."""
        with self._lock:
            if self._closed_by is None:
                log.error("storage is full: no new job starts until space is freed (accepted jobs wait)")
            self._closed_by = fault
            self._failures += 1
            self._next_probe = time.monotonic() + min(_PROBE_CAP_S, self.policy.delay(self._failures))

    def open(self) -> bool:
        """Whether workers may claim: open, or a due probe just succeeded. Never raises."""
        with self._lock:
            if self._closed_by is None or self.probe is None:
                return True
            if time.monotonic() < self._next_probe:
                return False
            try:
                self.probe()
            except Exception:  # noqa: BLE001 - still full (or failing): probe again later
                self._failures += 1
                self._next_probe = time.monotonic() + min(_PROBE_CAP_S, self.policy.delay(self._failures))
                return False
            log.warning("storage is writable again: jobs start again")
            self._closed_by, self._failures = None, 0
            return True


class RoundFailures:
    """Logs failed engine rounds without flooding the log: a fault of the machine (the disk full, the store
    locked), which fails every round until it passes, is logged with its code once and then at most every
    `every_s` with how often it recurred; anything else is logged with its traceback each time."""

    def __init__(self, where: str, every_s: float = 30.0) -> None:
        self.where = where
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def failed(self, exc: BaseException, retry_s: float) -> None:
        """Log one failed round."""
        fault = classify(exc)
        if fault.code not in ("storage_full", "store_busy"):
            log.error("%s failed; trying again in %.1f s", self.where, retry_s, exc_info=exc)
            return
        now = time.monotonic()
        with self._lock:
            self._since[fault.code] = self._since.get(fault.code, 0) + 1
            if now - self._last.get(fault.code, -self.every_s) < self.every_s:
                return
            self._last[fault.code], repeats = now, self._since.pop(fault.code)
        log.warning("%s failed: %s (%s: %s); trying again in %.1f s%s", self.where, fault.code, type(exc).__name__,
                    exc, retry_s, f" ({repeats} times since the last report)" if repeats > 1 else "")
