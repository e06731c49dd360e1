"""Runs a comparison: every payload × repeat on both sides (each side with its own concurrency), records each
attempt as one JSON line as it finishes (so a re-run resumes), then writes the report.

Latency is wall time from the submit to the outputs in hand (downloads included), as a client feels it. A side
that is a darkroom server is asked afterwards what ran each task (its runtime record); that is not timed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from PIL import Image
from tqdm import tqdm

from compare.clients import DialectClient, ImageSource, Output, RequestFailed
from compare.payloads import Payload
from compare.prices import GpuCost, PriceTable

RESULTS = "results.jsonl"
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4"}


@dataclass(frozen=True)
class Side:
    """One endpoint of the comparison."""

    label: Literal["a", "b"]
    name: str
    url: str
    key: str | None
    cost: Literal["table", "gpu"]


@dataclass(frozen=True)
class RunConfig:
    """Everything one `darkroom compare` run needs."""

    payloads: list[Payload]
    sides: tuple[Side, Side]
    dialect: str
    out: Path
    prices: PriceTable
    gpu: GpuCost
    concurrency: int = 2
    repeats: int = 1
    timeout_s: float = 600.0
    poll_s: float = 0.5
    retry_failed: bool = False
    progress: bool = True
    stop_after_auth_failures: int = 3
    """A side whose key is refused (401/403) this many times in a row gets no more requests (0: never stop)."""
    clients: Mapping[str, type[DialectClient]] = field(default_factory=dict)
    """The client of each dialect by its name (server/api/registry.py's `compare_dialects`)."""


class AuthBreaker:
    """Stops sending to a side whose key keeps being refused: a wrong key would otherwise spend a whole run (and,
    on a hosted provider, its rate limit) on 401s. The reason is kept for the report."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.reason: str | None = None

    def record(self, status: int | None, message: str) -> None:
        """One finished attempt's status."""
        if status in (401, 403):
            self.in_a_row += 1
            if self.limit and self.in_a_row >= self.limit and self.reason is None:
                self.reason = (f"stopped after {self.in_a_row} requests in a row were refused with {status} ("
                               f"{message[:160]}): check this side's key")
        else:
            self.in_a_row = 0


def digest(payload: Payload, dialect: str) -> str:
    """Identifies a payload's content, so a resumed run redoes a payload whose file entry changed."""
    text = json.dumps([payload.model_dump(mode="json"), dialect], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_records(out: Path) -> list[dict[str, Any]]:
    """Attempts recorded by earlier runs into `out` (a torn last line from a killed run is skipped)."""
    path = out / RESULTS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


async def run(cfg: RunConfig) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Send what is not done yet; (every current attempt record, each side's environment)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    dialect_of = {p.id: p.dialect or cfg.dialect for p in cfg.payloads}
    wanted = {(p.id, s.label, n): digest(p, dialect_of[p.id]) for p in cfg.payloads for s in cfg.sides
              for n in range(cfg.repeats)}
    kept: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in load_records(cfg.out):
        key = (r["payload"], r["side"], r["repeat"])
        if wanted.get(key) == r["digest"] and (r["ok"] or not cfg.retry_failed):
            kept[key] = r
    todo = [(p, s, n) for p in cfg.payloads for n in range(cfg.repeats) for s in cfg.sides
            if (p.id, s.label, n) not in kept]
    limits = httpx.Limits(max_connections=cfg.concurrency * 4 + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout_s, connect=10.0), limits=limits) as http:
        images = ImageSource(http)
        envs = dict(zip((s.label for s in cfg.sides), await asyncio.gather(*(probe(http, s) for s in cfg.sides)),
                        strict=True))
        gates = {s.label: asyncio.Semaphore(cfg.concurrency) for s in cfg.sides}
        breakers = {s.label: AuthBreaker(cfg.stop_after_auth_failures) for s in cfg.sides}
        bar = tqdm(total=len(wanted), initial=len(kept), unit="req", desc="compare", disable=not cfg.progress)
        with open(cfg.out / RESULTS, "a") as sink:

            async def one(p: Payload, side: Side, repeat: int) -> None:
                async with gates[side.label]:
                    breaker = breakers[side.label]
                    if breaker.reason is not None:
                        record = not_sent(p, side, repeat, dialect_of[p.id], breaker.reason)
                    else:
                        record = await attempt(http, images, cfg, p, side, repeat, dialect_of[p.id],
                                               envs[side.label]["darkroom"])
                        breaker.record(record["status_code"], record["error_message"])
                record["digest"] = wanted[(p.id, side.label, repeat)]
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                kept[(p.id, side.label, repeat)] = record
                bar.update(1)
                if not record["ok"] and record["error_code"] != "not_sent":
                    bar.write(f"{side.name} {p.id}#{repeat}: failed {record['status_code'] or '-'} "
                              f"{record['error_code']}: {record['error_message'][:120]}")

            await asyncio.gather(*(one(p, s, n) for p, s, n in todo))
        bar.close()
        for label, breaker in breakers.items():
            if breaker.reason is not None:
                envs[label]["stopped"] = breaker.reason
                bar.write(f"{envs[label]['name']}: {breaker.reason}")
    order = {key: i for i, key in enumerate(wanted)}
    return sorted(kept.values(), key=lambda r: order[(r["payload"], r["side"], r["repeat"])]), envs


def not_sent(payload: Payload, side: Side, repeat: int, dialect: str, reason: str) -> dict[str, Any]:
    """The record of an attempt the side's breaker kept from being sent (retried by a resumed run)."""
    return {"payload": payload.id, "side": side.label, "repeat": repeat, "dialect": dialect, "model": payload.model,
            "tier": payload.price_tier(), "ok": False, "status_code": None, "error_code": "not_sent",
            "error_message": reason, "latency_s": 0.0, "first_progress_s": None, "images": 0, "video_seconds": 0.0,
            "outputs": [], "task_id": None, "ran_on": None, "started_at": time.time()}


async def attempt(http: httpx.AsyncClient, images: ImageSource, cfg: RunConfig, payload: Payload, side: Side,
                  repeat: int, dialect: str, darkroom: bool) -> dict[str, Any]:
    """One request on one side, timed, its outputs saved under out/outputs/<payload>/."""
    client = cfg.clients[dialect](side.url, side.key, http, images, cfg.poll_s)
    record: dict[str, Any] = {"payload": payload.id, "side": side.label, "repeat": repeat, "dialect": dialect,
                              "model": payload.model, "tier": payload.price_tier(), "ok": False,
                              "status_code": None, "error_code": None, "error_message": "", "latency_s": 0.0,
                              "first_progress_s": None, "images": 0, "video_seconds": 0.0, "outputs": [],
                              "task_id": None, "ran_on": None, "started_at": time.time()}
    started = time.perf_counter()
    try:
        reply = await asyncio.wait_for(client.run(payload, started), cfg.timeout_s)
    except RequestFailed as exc:
        record.update(status_code=exc.status, error_code=exc.code, error_message=exc.message)
    except TimeoutError:
        record.update(error_code="timeout", error_message=f"no outputs within {cfg.timeout_s:g} s")
    except httpx.HTTPError as exc:
        record.update(error_code="connection", error_message=f"{type(exc).__name__}: {exc}"[:300])
    except (KeyError, TypeError, ValueError) as exc:
        record.update(error_code="bad_response", error_message=f"unexpected answer shape ({type(exc).__name__}: "
                                                                f"{exc})"[:300])
    else:
        if reply.outputs:
            record.update(ok=True, images=len(reply.outputs), video_seconds=round(reply.video_seconds, 4),
                          first_progress_s=None if reply.first_progress_s is None else round(reply.first_progress_s, 4),
                          task_id=reply.task_id)
            record["outputs"] = [_save(cfg.out, payload.id, side.label, repeat, n, out)
                                 for n, out in enumerate(reply.outputs)]
        else:
            record.update(error_code="no_output", error_message="the answer held no image or clip",
                          task_id=reply.task_id)
    record["latency_s"] = round(time.perf_counter() - started, 4)
    if darkroom and record["task_id"]:
        record["ran_on"] = await _ran_on(http, client, record["task_id"])
    return record


def _save(out: Path, payload_id: str, side: str, repeat: int, n: int, output: Output) -> dict[str, Any]:
    folder = out / "outputs" / payload_id
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{side}-r{repeat}-{n}.{_EXT.get(output.content_type, 'bin')}"
    (folder / name).write_bytes(output.data)
    entry: dict[str, Any] = {"file": f"outputs/{payload_id}/{name}", "bytes": len(output.data),
                             "content_type": output.content_type, "width": None, "height": None}
    if output.content_type.startswith("image/"):
        try:
            with Image.open(io.BytesIO(output.data)) as im:
                entry["width"], entry["height"] = im.size
        except OSError:
            entry["content_type"] += " (undecodable)"
    return entry


async def _ran_on(http: httpx.AsyncClient, client: Any, task_id: str) -> str | None:
    """What ran a darkroom task: weights, family, device and dtype from its runtime record."""
    try:
        _status, view = await client.get_json(f"/api/v1/tasks/{task_id}")
    except (RequestFailed, httpx.HTTPError):
        return None
    rt = (view.get("darkroom") or {}).get("runtime") or {}
    if not rt:
        return None
    demo = " (demo weights)" if rt.get("demo_weights") else ""
    return f"{rt.get('weights')}{demo} · {rt.get('family')} · {rt.get('device')} {rt.get('dtype')}"


async def probe(http: httpx.AsyncClient, side: Side) -> dict[str, Any]:
    """The side's environment: for a darkroom server its version, devices and weights; else that it is not one."""
    env: dict[str, Any] = {"name": side.name, "url": side.url, "cost": side.cost, "darkroom": False}
    headers = {"Authorization": f"Bearer {side.key}"} if side.key else {}
    try:
        r = await http.get(f"{side.url.rstrip('/')}/api/v1/engine", headers=headers, timeout=10.0)
        engine = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        engine = None
    if not isinstance(engine, dict) or "workers" not in engine:
        env["description"] = "not a darkroom server (no /api/v1/engine); treated as a hosted provider"
        return env
    env |= {"darkroom": True, "version": engine.get("version"),
            "devices": sorted({f"{w['device']} ({w.get('device_name') or '?'})" for w in engine["workers"]})}
    try:
        ready = (await http.get(f"{side.url.rstrip('/')}/ready", headers=headers, timeout=10.0)).json()
        env["weights"] = ready.get("weights", {})
    except (httpx.HTTPError, ValueError):
        env["weights"] = {}
    env["description"] = f"darkroom {env['version']} on {', '.join(env['devices'])}"
    return env
