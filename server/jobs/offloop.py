"""The job store's calls made from the event loop, on threads of their own.

The store's implementations block (SQLite waits for another process's lock up to its busy timeout, PostgreSQL for a
pooled connection and row locks). Run on the event loop, one locked store would stall every request, `/health`
included. Here each call runs on a small pool reserved for the store (so a locked database cannot starve the
threads that decode images), and the caller stops waiting after a deadline with `StoreBusy`, which the API answers
as 503 `store_busy` with Retry-After.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from server.faults import StoreBusy

T = TypeVar("T")


class OffLoop:
    """Awaitable store calls with a deadline."""

    def __init__(self, threads: int = 8, deadline_s: float = 5.0) -> None:
        self.deadline_s = deadline_s
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="store")

    async def __call__(self, fn: Callable[..., T], *args: Any, deadline_s: float | None = None, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a store thread; StoreBusy when it has not answered within the deadline (the call
        itself then finishes on its thread: callers whose writes must not land late pass the store a deadline of
        its own, see JobStore.create)."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.deadline_s if deadline_s is None else deadline_s)
        except TimeoutError:
            future.add_done_callback(_consume)
            raise StoreBusy("the job store did not answer in time") from None

    def close(self) -> None:
        """Stop taking calls (those running finish on their threads)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _consume(future: asyncio.Future[Any]) -> None:
    # A late answer nobody waits for: read its exception so asyncio does not log it as never retrieved.
    if not future.cancelled():
        future.exception()
