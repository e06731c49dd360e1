"""Webhook delivery: signed POSTs when a job finishes, retried with backoff, under the image-URL SSRF rules.

Each dialect registers a payload builder (its own callback shape: fal's envelope, Replicate's prediction,
BFL's result, darkroom's task). A job's webhook (URL, dialect, events, base URL, signing secret) is stored on
the job, so deliveries owed at a crash are made after the restart; every attempt is recorded on the job.

Signature (documented in the README): `X-Darkroom-Signature: sha256=<hex>` where hex is
HMAC-SHA256(secret, f"{X-Darkroom-Timestamp}.{raw body}"). The secret belongs to the API key the request used
(server/keys.py: its keys-file `webhook_secret`, else derived from the key), so one tenant cannot forge another's
deliveries; with auth off it is `DARKROOM_WEBHOOK_SECRET`, else a random secret kept in the data directory. A
per-request secret (BFL's `webhook_secret`) replaces it for that job.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from server.errors import ApiError, ErrorCode
from server.jobs.offloop import OffLoop
from server.jobs.store import FINAL_STATES, JobRecord, JobStore
from server.media.fetch import _resolve
from server.media.netguard import Allowlist, address_allowed

log = logging.getLogger("darkroom.webhooks")

PayloadBuilder = Callable[[JobRecord, str, str], dict[str, Any]]
"""(job, base URL, event) -> the JSON body a dialect's receivers expect."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Darkroom-Signature value for a body."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def local_secret(data_dir: Path) -> str:
    """A random secret kept in the data directory (used when no key or secret is configured)."""
    path = data_dir / "webhook_secret"
    if path.is_file():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.write_text(value)
    path.chmod(0o600)
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently deliveries are retried."""

    attempts: int = 6
    backoff_s: float = 1.0
    """First retry after this many seconds, doubling each time."""
    timeout_s: float = 10.0


class Webhooks:
    """Registers, delivers and records webhooks."""

    def __init__(self, store: JobStore, allowlist: Allowlist, policy: RetryPolicy, default_secret: str,
                 calls: OffLoop | None = None,
                 key_secret: Callable[[str | None], str | None] = lambda _caller: None) -> None:
        self.store = store
        self.key_secret = key_secret
        """The signing secret of the API key named (None: use `default_secret`, auth is off)."""
        self.calls = calls or OffLoop(threads=2)
        """The store's calls, off the event loop."""
        self.allowlist = allowlist
        self.policy = policy
        self.default_secret = default_secret
        self.builders: dict[str, PayloadBuilder] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # (job, event) pairs being delivered: a job that finishes while its webhook is being registered is
        # seen by both paths, and must be delivered once. One asked for again while in flight is looked at again
        # once that delivery ends (it may have read the job just before it finished).
        self._inflight: set[tuple[str, str]] = set()
        self._again: set[tuple[str, str]] = set()

    def builder(self, dialect: str, build: PayloadBuilder) -> None:
        """Register how `dialect` shapes its callbacks."""
        self.builders[dialect] = build

    async def check_url(self, url: str, field: str) -> None:
        """422 url_not_allowed unless `url` is http(s) to an allowed address (checked again at delivery)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ApiError(422, ErrorCode.URL_NOT_ALLOWED, "webhook URLs must be http(s) without credentials", field)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await _resolve(parts.hostname, port)
        if not addresses:
            raise ApiError(422, ErrorCode.URL_NOT_ALLOWED, "the webhook URL's host could not be resolved", field)
        if not all(address_allowed(parts.hostname, ip, self.allowlist) for ip in addresses):
            raise ApiError(422, ErrorCode.URL_NOT_ALLOWED, "the webhook URL points to a private or local address; "
                           "ask the operator to add the host to DARKROOM_URL_ALLOWLIST if it is trusted", field)

    async def prepare(self, url: str, dialect: str, base: str, field: str, caller: str | None,
                      events: tuple[str, ...] = ("completed",), secret: str | None = None) -> dict[str, Any]:
        """A checked webhook for a job `caller`'s key is about to submit, signed with that key's secret (or the
        request's own `secret`); the job store keeps it in the job's own transaction, so a crash cannot separate
        an accepted job from its webhook (deliveries owed are found again after a restart)."""
        await self.check_url(url, field)
        return {"url": url, "dialect": dialect, "base": base, "events": list(events),
                "secret": secret or self.key_secret(caller) or self.default_secret, "attempts": [], "delivered": []}

    def accepted(self, job_id: str) -> None:
        """A job was committed: deliver its `start` event (when asked for) and, if it already finished, its
        completion. Called on the event loop."""
        self._spawn(job_id, "start")
        self._spawn(job_id, "completed")  # delivered only if it finished before this ran

    # ---- delivery -------------------------------------------------------------------------------------------
    async def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on `loop`; re-send what a crash left owed."""
        self._loop = loop
        try:
            owed = await self.calls(self.store.owed_webhooks, deadline_s=30.0)
        except Exception:  # a busy store at start-up: they are re-sent at the next start
            log.exception("could not look for webhooks owed from before the restart")
            return
        for job_id in owed:
            self._spawn(job_id, "completed")

    def finished(self, job_id: str) -> None:
        """A job reached a final state (called from any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn, job_id, "completed")

    def _spawn(self, job_id: str, event: str) -> None:
        """Deliver `event` of `job_id` if its webhook wants it and it was not delivered yet (looked up by the
        delivery itself, off the event loop). Called on the event loop."""
        if (job_id, event) in self._inflight:
            self._again.add((job_id, event))
            return
        self._inflight.add((job_id, event))
        task = asyncio.ensure_future(self._deliver(job_id, event))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._inflight.discard((job_id, event))
            if (job_id, event) in self._again and not t.cancelled():
                self._again.discard((job_id, event))
                self._spawn(job_id, event)

        task.add_done_callback(done)

    async def _due(self, job_id: str, event: str) -> JobRecord | None:
        """The job, when `event` is still to be delivered for it (a completion only once it is final)."""
        record = await self.calls(self.store.get, job_id, deadline_s=30.0)
        hook = record.webhook if record else None
        if record is None or not hook or event not in hook["events"] or event in hook["delivered"]:
            return None
        if event == "completed" and record.status not in FINAL_STATES:
            return None
        return record

    async def stop(self) -> None:
        """Cancel deliveries in flight (they are owed and resume after a restart)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, job_id: str, event: str) -> None:
        try:
            await self._attempts(job_id, event)
        except Exception:  # the store failed us: the delivery is owed and re-sent after a restart
            log.exception("webhook for %s (%s) stopped: the job store failed", job_id, event)

    async def _attempts(self, job_id: str, event: str) -> None:
        for attempt in range(self.policy.attempts):
            record = await self._due(job_id, event)
            if record is None:
                return
            hook = record.webhook
            assert hook is not None
            build = self.builders.get(hook["dialect"])
            if build is None:
                return
            body = json.dumps(build(record, hook["base"], event), separators=(",", ":")).encode()
            started = time.time()
            outcome: dict[str, Any] = {"event": event, "at": round(started, 3), "attempt": attempt + 1}
            try:
                status = await self._post(hook["url"], body, hook["secret"], job_id, event)
                outcome["status_code"] = status
                ok = 200 <= status < 300
            except ApiError as exc:
                outcome["error"] = exc.message
                ok = False
                if exc.code is ErrorCode.URL_NOT_ALLOWED:
                    await self.calls(self.store.add_webhook_attempt, job_id, outcome, None, deadline_s=30.0)
                    return  # the address turned private: never retried
            except (httpx.HTTPError, OSError) as exc:
                outcome["error"] = type(exc).__name__
                ok = False
            outcome["ms"] = round((time.time() - started) * 1000, 1)
            await self.calls(self.store.add_webhook_attempt, job_id, outcome, event if ok else None, deadline_s=30.0)
            if ok:
                return
            await asyncio.sleep(self.policy.backoff_s * (2 ** attempt))
        log.warning("webhook for %s (%s) gave up after %d attempts", job_id, event, self.policy.attempts)

    async def _post(self, url: str, body: bytes, secret: str, job_id: str, event: str) -> int:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        addresses = await _resolve(host, port)
        # Checked again at delivery and the connection pinned to the checked address: no DNS rebinding.
        if not addresses or not all(address_allowed(host, ip, self.allowlist) for ip in addresses):
            raise ApiError(422, ErrorCode.URL_NOT_ALLOWED, "the webhook URL now points to a disallowed address")
        ip = addresses[0]
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        pinned = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        timestamp = str(int(time.time()))
        headers = {"Host": host if parts.port is None else f"{host}:{parts.port}",
                   "Content-Type": "application/json", "User-Agent": "darkroom-webhooks",
                   "X-Darkroom-Timestamp": timestamp, "X-Darkroom-Signature": sign(secret, timestamp, body),
                   "X-Darkroom-Task": job_id, "X-Darkroom-Event": event}
        async with httpx.AsyncClient(timeout=self.policy.timeout_s, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("POST", pinned, content=body, headers=headers,
                                           extensions={"sni_hostname": host} if parts.scheme == "https" else {})
            response = await client.send(request)
            return response.status_code
