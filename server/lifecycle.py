"""How a running server stops: drain on SIGTERM, restart after a GPU fault or a hung worker.

Draining: readiness turns 503 and new submissions get 503 `shutting_down` (with Retry-After) while the listener
stays open; workers claim nothing new; running jobs get `drain_timeout_s` to finish, then stop at their next
step and go back to the queue. Queued jobs simply stay in the database. Then the HTTP server is told to exit.
A restart is the same drain with a different exit code, which the supervisor (server/supervisor.py) answers
by starting a fresh process: a poisoned CUDA context is only ever cleared by a new process.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from server.jobs.store import JobStore
from server.logs import event

if TYPE_CHECKING:
    from server.engine.loop import Engine

log = logging.getLogger("darkroom.lifecycle")

# EX_TEMPFAIL: "try again"; the supervisor restarts a child that exits with it.
RESTART_EXIT_CODE = 75
# After the drain's time is up, how long running jobs get to reach their next step boundary.
_INTERRUPT_GRACE_S = 10.0


class Lifecycle:
    """The server's accepting → draining → exiting states, shared by signal handling, the engine and /ready."""

    def __init__(self, engine: Engine, store: JobStore, drain_timeout_s: float, restart_on_fault: bool) -> None:
        self.engine = engine
        self.store = store
        self.drain_timeout_s = drain_timeout_s
        self.restart_on_fault = restart_on_fault
        self.draining = False
        self.restart = False
        self.reason = ""
        self._lock = threading.Lock()
        self._exit: Callable[[], None] = lambda: None
        self.drained = threading.Event()

    def on_exit(self, fn: Callable[[], None]) -> None:
        """What ends the process's serving loop once drained (set by whoever runs the HTTP server)."""
        self._exit = fn

    def fault(self, reason: str) -> None:
        """A worker was taken out: drain and restart when supervised; otherwise keep serving degraded."""
        if self.restart_on_fault:
            self.begin_drain(reason, restart=True)
        else:
            log.error("%s; not supervised, so the server keeps running without that worker", reason)

    def begin_drain(self, reason: str, restart: bool = False) -> bool:
        """Start draining (once); False when a drain is already under way."""
        with self._lock:
            if self.draining:
                return False
            self.draining, self.restart, self.reason = True, restart, reason
        running = self.engine.running()
        event(log, "server.draining", f"draining ({reason}): no new job starts; {len(running)} running job(s) may "
              f"finish for up to {self.drain_timeout_s:g} s, then stop at their next denoising step (up to "
              f"{_INTERRUPT_GRACE_S:g} s more) and go back to the queue; queued jobs stay on disk"
              + ("; then the process restarts" if restart else ""), logging.WARNING, reason=reason,
              running=len(running), drain_timeout_s=self.drain_timeout_s, restart=restart)
        self.engine.stop_claiming()
        threading.Thread(target=self._drain, name="drain", daemon=True).start()
        return True

    def _drain(self) -> None:
        started = time.monotonic()
        if not self.engine.wait_idle(self.drain_timeout_s):
            left = self.engine.running()
            event(log, "server.drain_timeout", f"drain time is up with {len(left)} job(s) still running: asking "
                  f"them to stop at their next denoising step and go back to the queue (waiting up to "
                  f"{_INTERRUPT_GRACE_S:g} s; a job already past its last step finishes instead)", logging.WARNING,
                  running=len(left), jobs=left)
            self.engine.interrupt_running()
            if not self.engine.wait_idle(_INTERRUPT_GRACE_S):
                # A step that never returns (hung kernel): its job goes back now; a late answer is discarded.
                claims = self.engine.running_claims()
                requeued = self.store.requeue([c.job_id for c in claims], claims)
                event(log, "server.drain_forced", f"{requeued} job(s) reached no step boundary within "
                      f"{_INTERRUPT_GRACE_S:g} s: back in the queue now (a late result is discarded)",
                      logging.WARNING, requeued=requeued)
        event(log, "server.drained", f"drained in {time.monotonic() - started:.1f} s"
              + ("; restarting" if self.restart else "; stopping"), seconds=round(time.monotonic() - started, 2),
              restart=self.restart)
        self.drained.set()
        self._exit()


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains (the server keeps answering, /ready says 503)
    before it stops listening; a second signal stops it at once."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain. Later ones: uvicorn's own (graceful close, then forced)."""
        if self.lifecycle.begin_drain(f"signal {signal.Signals(sig).name}"):
            return
        super().handle_exit(sig, frame)

    def exit_now(self) -> None:
        """Called (from the drain thread) when draining is over."""
        self.should_exit = True
