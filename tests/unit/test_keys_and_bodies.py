"""Named keys (constant-time digest match, keys file validation), the per-key token bucket, and the JSON nesting
count used before any body is parsed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from server.api.request_body import json_depth, parse_json_object
from server.errors import ApiError
from server.keys import ApiKey, KeyRing, RateLimiter


def test_keys_file_and_single_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f"""
[keys.a]
key = "aaaaaaaaaaaaaaaaaaaa"
rate_per_minute = 10
[keys.b]
key_sha256 = "{hashlib.sha256(b'bbbbbbbbbbbbbbbbbbbb').hexdigest()}"
jobs_per_day = 5
""")
    ring = KeyRing.load("cccccccccccccccccccc", keys, rate_per_minute=60, jobs_per_day=0)
    assert [k.name for k in ring.keys] == ["default", "a", "b"]
    assert ring.match(b"aaaaaaaaaaaaaaaaaaaa").name == "a"  # type: ignore[union-attr]
    assert ring.match(b"bbbbbbbbbbbbbbbbbbbb").jobs_per_day == 5  # type: ignore[union-attr]
    assert ring.match(b"cccccccccccccccccccc").rate_per_minute == 60  # type: ignore[union-attr]
    assert ring.match(b"aaaaaaaaaaaaaaaaaaab") is None and ring.match(None) is None
    assert ring.jobs_per_day("b") == 5 and ring.jobs_per_day("nobody") == 0


@pytest.mark.parametrize("body", ['[keys.x]\nkey = "short"', '[keys.x]\nkey = "aaaaaaaaaaaaaaaaaaaa"\nkey_sha256 = '
                                  f'"{"0" * 64}"', '[keys.x]\nrate_per_minute = 1', '[other]\nx = 1',
                                  '[keys.x]\nkey = "aaaaaaaaaaaaaaaaaaaa"\nextra = 1'])
def test_bad_keys_files_are_refused(tmp_path: Path, body: str) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(body)
    with pytest.raises(ValueError, match="keys"):
        KeyRing.load(None, keys, 0, 0)


def test_each_key_has_its_own_webhook_secret_and_admin_flag(tmp_path: Path) -> None:
    import hmac

    from server.keys import derive_webhook_secret

    digest = hashlib.sha256(b"hashed-key-0123456789").digest()
    path = tmp_path / "keys.toml"
    path.write_text('[keys.a]\nkey = "tenant-a-0123456789"\n[keys.b]\nkey = "tenant-b-0123456789"\n'
                    'webhook_secret = "b-chose-this-secret-0"\nadmin = true\n'
                    f'[keys.c]\nkey_sha256 = "{digest.hex()}"\n')
    ring = KeyRing.load("operator-key-0123456789", path, 0, 0, webhook_secret="server-wide-secret-xyz")
    secrets = {k.name: ring.webhook_secret(k.name) for k in ring.keys}
    assert secrets == {
        "default": "server-wide-secret-xyz",  # the api_key setting keeps DARKROOM_WEBHOOK_SECRET, as before
        "a": hmac.new(b"tenant-a-0123456789", b"darkroom-webhook-v1", hashlib.sha256).hexdigest(),
        "b": "b-chose-this-secret-0",
        "c": derive_webhook_secret(digest),  # known only by its digest: derived from the digest's bytes
    }
    assert len(set(secrets.values())) == 4
    assert [k.name for k in ring.keys if ring.is_admin(k.name)] == ["default", "b"]
    assert KeyRing.load(None, None, 0, 0).is_admin(None)  # auth off: the one caller sees everything


def test_token_bucket_refills_continuously() -> None:
    key = ApiKey("k", b"", rate_per_minute=60, jobs_per_day=0)
    limiter = RateLimiter()
    assert all(limiter.take(key, now=100.0) == 0 for _ in range(60))  # a minute's burst
    wait = limiter.take(key, now=100.0)
    assert wait == pytest.approx(1.0)
    assert limiter.take(key, now=101.01) == 0  # one token back after a second
    assert limiter.take(ApiKey("free", b"", 0, 0), now=0) == 0


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": "[[[{{{", "b": [1, [2]]}') == 3
    assert json_depth(b'{"a": "\\"[[[", "b": 1}') == 1
    assert json_depth(b"[" * 100_000) == 100_000
    with pytest.raises(ApiError) as exc:
        parse_json_object(b"[" * 100_000, 32)
    assert exc.value.code == "json_too_deep" and exc.value.status == 400
    assert parse_json_object(b'{"deep": [[[[1]]]]}', 32) == {"deep": [[[[1]]]]}
    with pytest.raises(ApiError):
        parse_json_object(b"[1, 2]", 32)
