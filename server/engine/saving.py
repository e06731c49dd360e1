"""Finished renders stored off the device's thread: a small pool that encodes and writes outputs while the next
render runs, and knows which jobs it still holds (their leases stay renewed and a drain waits for them)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from server.jobs.store import Claim

log = logging.getLogger("darkroom.engine")

BACKLOG = 16
"""Rendered jobs whose outputs may wait for the savers at once, so a device faster than the encoders cannot pile
up images (a batch of eight 1024-px PNGs is about half a second of zlib)."""


class Savers:
    """Runs each job's store-and-finish step on a pool thread, at most `BACKLOG` waiting."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="save")
        self._slots = threading.BoundedSemaphore(BACKLOG)
        self._lock = threading.Lock()
        self._held: dict[str, Claim] = {}

    def claims(self) -> dict[str, Claim]:
        """The jobs being stored now, with their claims."""
        with self._lock:
            return dict(self._held)

    def submit(self, job_id: str, claim: Claim, finish: Callable[[], None]) -> None:
        """Run `finish` (store the outputs, complete the job) on a saver, waiting while the backlog is full. An
        exception is logged: the job's lease then lapses and it runs again."""
        self._slots.acquire()
        with self._lock:
            self._held[job_id] = claim

        def run() -> None:
            try:
                finish()
            except Exception:  # the store is down: the lease lapses and the job runs again
                log.exception("could not finish %s; it goes back to the queue when its lease lapses", job_id)
            finally:
                with self._lock:
                    self._held.pop(job_id, None)
                self._slots.release()

        try:
            self._pool.submit(run)
        except RuntimeError:  # shut down already (a render that outlived the engine's stop): store it here
            run()

    def shutdown(self) -> None:
        """Wait for every job handed over to be stored; later ones run on their caller's thread."""
        self._pool.shutdown(wait=True)
