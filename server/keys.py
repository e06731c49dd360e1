"""Named API keys with per-key limits, from `api_key` and/or a TOML keys file.

    [keys.studio-a]
    key = "sk-..."               # or key_sha256 = "<hex>" to keep the secret out of the file
    rate_per_minute = 120        # requests; 0 = unlimited (default: the server setting)
    jobs_per_day = 2000          # accepted jobs per rolling 24 h; 0 = unlimited
    webhook_secret = "..."       # signs this key's webhooks (default: derived from the key, see below)
    admin = false                # an admin key sees every key's task ids in /api/v1/engine and /ready

Each key signs its own webhooks, so a tenant that can verify its deliveries cannot forge another's: the key's
`webhook_secret` when set, else HMAC-SHA256(<the key>, "darkroom-webhook-v1") in hex (for a `key_sha256` entry the
key is not known: HMAC-SHA256(<its 32 digest bytes>, "darkroom-webhook-v1")). The `api_key` setting's key (named
"default", the operator's, an admin) signs with `DARKROOM_WEBHOOK_SECRET` when that is set.

Keys are matched by comparing SHA-256 digests with `hmac.compare_digest` against every entry, so the time taken
says nothing about which key, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class KeyEntry(BaseModel):
    """One key as written in the keys file."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, min_length=16)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    rate_per_minute: int | None = Field(None, ge=0)
    jobs_per_day: int | None = Field(None, ge=0)
    webhook_secret: str | None = Field(None, min_length=16)
    admin: bool = False

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        return self


@dataclass(frozen=True)
class ApiKey:
    """A key the server accepts: its name, the digest of its secret, its limits (0 = unlimited), the secret that
    signs its webhooks, and whether it may see every key's tasks."""

    name: str
    digest: bytes
    rate_per_minute: int
    jobs_per_day: int
    webhook_secret: str = ""
    admin: bool = False


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


WEBHOOK_CONTEXT = b"darkroom-webhook-v1"


def derive_webhook_secret(key: bytes) -> str:
    """The webhook signing secret that belongs to an API key (or, for a key known only by its digest, to the
    digest's bytes)."""
    return hmac.new(key, WEBHOOK_CONTEXT, hashlib.sha256).hexdigest()


class KeyRing:
    """Every accepted key; `match` finds the one presented (or None)."""

    def __init__(self, keys: list[ApiKey]) -> None:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        self.keys = keys

    @classmethod
    def load(cls, single_key: str | None, keys_file: Path | None, rate_per_minute: int, jobs_per_day: int,
             webhook_secret: str | None = None) -> KeyRing:
        """The `api_key` setting (named "default": the operator's key, an admin, signing with `webhook_secret`
        when given) plus every entry of the keys file."""
        keys = []
        if single_key:
            keys.append(ApiKey("default", _digest(single_key.encode()), rate_per_minute, jobs_per_day,
                               webhook_secret or derive_webhook_secret(single_key.encode()), admin=True))
        if keys_file is not None:
            raw = tomllib.loads(keys_file.read_text())
            unknown = set(raw) - {"keys"}
            if unknown:
                raise ValueError(f"{keys_file.name}: unknown sections {sorted(unknown)}; use [keys.NAME] tables")
            for name, body in raw.get("keys", {}).items():
                try:
                    entry = KeyEntry.model_validate(body)
                except ValueError as exc:
                    raise ValueError(f"{keys_file.name} [keys.{name}]: {exc}") from None
                secret = entry.key_sha256
                digest = bytes.fromhex(secret) if secret else _digest((entry.key or "").encode())
                signing = entry.webhook_secret or derive_webhook_secret(entry.key.encode() if entry.key else digest)
                keys.append(ApiKey(name, digest,
                                   rate_per_minute if entry.rate_per_minute is None else entry.rate_per_minute,
                                   jobs_per_day if entry.jobs_per_day is None else entry.jobs_per_day,
                                   signing, entry.admin))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        """True when any key is configured (auth on)."""
        return bool(self.keys)

    def match(self, presented: bytes | None) -> ApiKey | None:
        """The key whose secret was presented; every entry is compared, in constant time each."""
        if presented is None:
            return None
        digest = _digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def jobs_per_day(self, name: str | None) -> int:
        """The daily job quota of key `name` (0 = unlimited or no such key)."""
        return next((k.jobs_per_day for k in self.keys if k.name == name), 0)

    def webhook_secret(self, name: str | None) -> str | None:
        """The secret that signs key `name`'s webhooks (None: no such key, or auth is off)."""
        return next((k.webhook_secret for k in self.keys if k.name == name), None)

    def is_admin(self, name: str | None) -> bool:
        """Whether key `name` sees every key's tasks (with auth off, the one caller sees everything)."""
        return not self.enabled or any(k.admin for k in self.keys if k.name == name)


class RateLimiter:
    """A token bucket per key name: `rate_per_minute` requests, refilled continuously, bursting to one minute's."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: ApiKey, now: float | None = None) -> float:
        """0 when the request may go ahead; otherwise seconds until it may."""
        if key.rate_per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        per_s = key.rate_per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key.name, (float(key.rate_per_minute), now))
            tokens = min(float(key.rate_per_minute), tokens + (now - last) * per_s)
            if tokens >= 1.0:
                self._buckets[key.name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key.name] = (tokens, now)
            return (1.0 - tokens) / per_s
