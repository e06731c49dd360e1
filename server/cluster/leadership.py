"""Which front end runs the engine when the workers are shared (the Ray backend): the one holding the job store's
engine lock. The others take requests and show the cluster; if the holder dies its lock is freed and one of them
takes over within `poll_s`. Every front end also watches the cluster for nodes that join."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from server.engine.loop import Engine
from server.engine.worker_handle import WorkerHandle
from server.jobs.store import EngineLock

log = logging.getLogger("darkroom.cluster")


class Discovers(Protocol):
    """Finds worker handles that appeared since the last call."""

    def discover(self, wait_s: float = 0.0) -> list[WorkerHandle]: ...


class EngineLeadership:
    """Runs `engine` in this process while it holds `lock`; adds workers `cluster` discovers."""

    def __init__(self, engine: Engine, lock: EngineLock, cluster: Discovers, on_lost: Callable[[str], None],
                 poll_s: float = 2.0, discover_every_s: float = 10.0,
                 on_joined: Callable[[WorkerHandle], None] = lambda _handle: None) -> None:
        self.engine = engine
        self.lock = lock
        self.cluster = cluster
        self.on_lost = on_lost
        self.on_joined = on_joined
        """Called with each worker as it is found (what it runs as demo weights, say)."""
        self.poll_s = poll_s
        self.discover_every_s = discover_every_s
        self._stop = threading.Event()

    def start(self) -> None:
        """Try for the lock now (a sole front end starts its engine at once), then keep watching."""
        self._step()
        if not self.engine.started:
            # Workers are the cluster's: a front end that does not run the engine is ready once it sees them.
            self.engine.ready.set()
        # Two threads: discovery waits for a joining node's actor to load its weights, which must not hold up
        # noticing a lost lock.
        threading.Thread(target=self._watch, name="engine-leadership", daemon=True).start()
        threading.Thread(target=self._discover, name="cluster-discovery", daemon=True).start()

    def stop(self) -> None:
        """Stop watching and give the lock up (the engine itself is stopped by the app)."""
        self._stop.set()
        self.lock.release()

    def _step(self) -> None:
        if not self.engine.started:
            if self.lock.try_acquire():
                log.info("this front end holds the engine lock: it runs the engine for the cluster")
                self.engine.start()
            return
        if not self.lock.held() and not self.lock.try_acquire():
            # Another front end runs the engine now; two engines would still finish each job once (leases), but
            # only one should plan: restart as a plain front end.
            self.on_lost("another front end took the engine lock")
            self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._step()
            except Exception:  # a failed round (database briefly away) is retried
                log.exception("engine leadership round failed; retrying")

    def _discover(self) -> None:
        # The first round at once: a front end starts with no worker and queues work until one is found.
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.discover_every_s
            try:
                for handle in self.cluster.discover():
                    log.info("worker %s joined (%s)", handle.name, handle.device)
                    self.on_joined(handle)
                    self.engine.add_worker(handle)
            except Exception:  # a failed round (cluster briefly away) is retried
                log.exception("cluster discovery failed; retrying")
