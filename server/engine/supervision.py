"""The engine's supervision thread: keeps leases alive, puts lapsed ones back, and keeps workers working.

Each round: renew the leases of running jobs (learning of cancels requested elsewhere); put jobs whose lease lapsed
back in the queue; take out a worker whose render made no step for `step_timeout_s` (a hung kernel or a deadlock:
a Python thread cannot be killed, so its jobs are re-queued, a late answer is discarded by the lease check, and
`on_fault` asks for a process restart, the only way to get the device back); start again a worker thread that
died; and ask for a restart once no worker has run for the grace period (what /ready reports as "no worker
running"). A round that fails (the store away) is logged and the next one runs: this thread never dies of it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from server.engine.recovery import RoundFailures

if TYPE_CHECKING:
    from server.engine.loop import Engine

log = logging.getLogger("darkroom.engine")


class Supervision:
    """One engine's supervision rounds."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._last_renew = 0.0
        self._last_reap = 0.0
        self._no_worker_since: float | None = None
        self._failures = RoundFailures("an engine supervision round")

    def run(self) -> None:
        """Rounds until the engine stops."""
        engine = self.engine
        renew_every = min(1.0, engine.store.lease_s / 3)
        while True:
            with engine._cond:
                if engine._stopping:
                    return
                engine._cond.wait(timeout=min(0.25, renew_every))
            try:
                self.round(time.monotonic(), renew_every)
            except Exception as exc:  # noqa: BLE001 - see the module docstring
                engine._count("supervision_errors")
                self._failures.failed(exc, renew_every)

    def round(self, now: float, renew_every: float) -> None:
        """One round (see the module docstring)."""
        engine = self.engine
        if now - self._last_renew >= renew_every:
            self._last_renew = now
            cancels = engine.store.renew(engine.running_claims())
            if cancels:
                with engine._cond:
                    engine._cancel_requested |= cancels
        if now - self._last_reap >= engine.reap_every_s:
            self._last_reap = now
            back = engine.store.requeue_expired()
            if back:
                log.warning("re-queued %d job(s) whose lease lapsed: %s", len(back), ", ".join(back))
                engine.notify()
        for slot in engine.slots:
            busy = slot.busy_with
            if busy and not slot.fault and now - slot.beat > engine.step_timeout_s:
                engine._take_out(slot, list(busy), f"no progress for {engine.step_timeout_s:g} s (hung)",
                                 list(slot.claims))
        # Judged before restarts: a worker whose thread dies as soon as it starts is not running.
        running = any(s.alive and not s.fault for s in engine.slots)
        self._restart_dead_workers()
        self._watch_for_no_worker(now, running)

    def _restart_dead_workers(self) -> None:
        """A worker thread that died anyway (something raised past every guard) is started again; the jobs it
        held go back to the queue."""
        engine = self.engine
        with engine._cond:
            if engine._stopping or not engine.started:
                return
            dead = [s for s in engine.slots if not s.fault and s.thread is not None and not s.thread.is_alive()]
            for slot in dead:
                held, slot.busy_with, slot.claims = list(slot.claims), (), []
                engine.stats["worker_restarts"] += 1
                log.error("worker %s's thread died; starting it again (%d restart(s) so far)", slot.name,
                          engine.stats["worker_restarts"])
                engine._start_slot(slot)
                if held:
                    threading.Thread(target=engine._give_back, args=(held,), daemon=True).start()

    def _watch_for_no_worker(self, now: float, running: bool) -> None:
        """/ready answers 503 while no worker runs; past the grace period, ask for a fresh process (supervised)."""
        engine = self.engine
        if not engine.started or not engine.slots or engine._stopping:
            return
        if running:
            self._no_worker_since = None
            return
        grace = engine.faults.no_worker_grace_s
        if self._no_worker_since is None:
            self._no_worker_since = now
        elif now - self._no_worker_since >= grace:
            self._no_worker_since = float("inf")  # asked once
            log.error("no worker has been running for %g s", grace)
            engine.hooks.on_fault(f"no worker running for {grace:g} s")
