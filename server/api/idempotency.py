"""Idempotency-Key for the native submit routes: a retried request with the same key and body gets the same task.

Same key, same body -> the first request's task (whether it is pending, running or done); same key, another body
-> 422 idempotency_key_reused. Keys are scoped by the API key that sent them and kept in the job database, so
they survive restarts.

While a request is being accepted its key is reserved, and the reservation is touched every `HEARTBEAT_S`. One
not touched for `RESERVATION_STALE_S` belongs to a request whose process died mid-accept (kill -9, a crash): the
next request with the key takes it over, so a client retrying after a crash gets its job accepted seconds after
the restart instead of 409 until the next one. The binding of key to job is checked in the job's own insert, so
even a request that stalled past the bound cannot make a second job for its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from server.api.auth import caller
from server.context import AppContext
from server.errors import ApiError, ErrorCode
from server.jobs.store import ReservationLost

HEADER = "idempotency-key"
MAX_KEY = 255
HEARTBEAT_S = 2.0
RESERVATION_STALE_S = 10.0  # five missed heartbeats: the request's process is gone


def body_digest(fields: dict[str, Any], files: dict[str, list[bytes]]) -> str:
    """A hash of the request's meaning: its fields (any order) and its uploaded files (not the multipart framing)."""
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for role in sorted(files):
        for data in files[role]:
            h.update(role.encode() + hashlib.sha256(data).digest())
    return h.hexdigest()


async def submit_once(request: Request, ctx: AppContext, digest: str,
                      submit: Callable[[str | None], Awaitable[str]]) -> tuple[str, bool]:
    """Run `submit` unless this Idempotency-Key already made a task; returns (job id, created now).

    `submit` gets the scoped key and must hand it to the job store, which binds it to the job in the same
    transaction that commits the job: a crash between the two can neither lose the binding nor let a retry
    create a second job.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return await submit(None), True
    if not 0 < len(key) <= MAX_KEY:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, f"Idempotency-Key must be 1-{MAX_KEY} characters",
                       "Idempotency-Key")
    # Scoped by the key's name (a hash of it, so the stored key says nothing): each key its own Idempotency-Keys.
    owner = hashlib.sha256((caller(request.scope) or "").encode()).hexdigest()[:16]
    scoped = f"{owner}:{key}"
    # Wait for a reservation in progress until it is bound, or until it would have gone stale had its request died
    # (then this request takes it over): a retry after a crash is accepted, a duplicate of a live request answered.
    deadline = time.monotonic() + RESERVATION_STALE_S + HEARTBEAT_S
    while True:
        new, job_id, first_digest = await ctx.service.reserve_key(scoped, digest, RESERVATION_STALE_S)
        if first_digest != digest:
            raise ApiError(422, ErrorCode.IDEMPOTENCY_KEY_REUSED, "this Idempotency-Key was already used with a "
                           "different request body; use a new key for a new request", "Idempotency-Key")
        if new:
            heartbeat = asyncio.create_task(_keep_reserved(ctx, scoped))
            try:
                job_id = await submit(scoped)
            except ReservationLost:
                continue  # this request stalled past the bound and another took the key: answer with its job
            except BaseException:
                await _release(ctx, scoped)
                raise
            finally:
                heartbeat.cancel()
            return job_id, True
        if job_id is not None:
            return job_id, False
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)  # the first request with this key is still being accepted
    raise ApiError(409, ErrorCode.IDEMPOTENCY_KEY_REUSED, "a request with this Idempotency-Key is still being "
                   "accepted; retry shortly", "Idempotency-Key")


async def _keep_reserved(ctx: AppContext, scoped: str) -> None:
    """Touch the reservation of a request being accepted, so no other request takes it over."""
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        # A busy store: the next heartbeat tries again (a reservation goes stale after five misses).
        with contextlib.suppress(Exception):
            await ctx.service.touch_key(scoped)


async def _release(ctx: AppContext, scoped: str) -> None:
    """Free the key of a request refused before its job was committed (a busy store leaves it to go stale)."""
    with contextlib.suppress(Exception):
        await ctx.service.release_key(scoped)
