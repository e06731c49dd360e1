"""Wakes HTTP handlers waiting on a job when a worker thread finishes it."""

from __future__ import annotations

import asyncio
import threading


class CompletionHub:
    """Thread-safe bridge from worker threads to asyncio waiters, keyed by job id."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()

    def register(self, job_id: str) -> asyncio.Event:
        """An event set when `job_id` reaches a final state. Register before the job can finish."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append((asyncio.get_running_loop(), event))
        return event

    def unregister(self, job_id: str, event: asyncio.Event) -> None:
        """Forget a waiter (after it woke or timed out)."""
        with self._lock:
            waiters = self._waiters.get(job_id, [])
            self._waiters[job_id] = [(lp, ev) for lp, ev in waiters if ev is not event]
            if not self._waiters[job_id]:
                del self._waiters[job_id]

    def finished(self, job_id: str) -> None:
        """Called from any thread when a job is completed or failed."""
        with self._lock:
            waiters = list(self._waiters.get(job_id, []))
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass
