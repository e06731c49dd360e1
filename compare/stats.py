"""Per-side figures of a comparison, from its attempt records (one answer: the report's HTML and JSON read these)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from compare.prices import GpuCost, PriceTable


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95, max and mean (None when there are no values); linear interpolation between ranks."""
    if not values:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    arr = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 4), "p95": round(float(np.percentile(arr, 95)), 4),
            "max": round(float(arr.max()), 4), "mean": round(float(arr.mean()), 4)}


def busy_seconds(records: list[dict[str, Any]]) -> float:
    """Seconds during which at least one request of these was in flight (gaps between resumed runs excluded)."""
    spans = sorted((r["started_at"], r["started_at"] + r["latency_s"]) for r in records)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def side_summary(records: list[dict[str, Any]], cost_basis: str, dialect_of: dict[str, str],
                 prices: PriceTable, gpu: GpuCost) -> dict[str, Any]:
    """Latency, failures, throughput and cost of one side's records."""
    ok = [r for r in records if r["ok"]]
    images = sum(r["images"] for r in ok)
    video_s = sum(r["video_seconds"] for r in ok)
    busy = busy_seconds([r for r in records if r["error_code"] != "not_sent"])
    summary: dict[str, Any] = {
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "failure_rate": round((len(records) - len(ok)) / len(records), 4) if records else None,
        "errors": dict(Counter(f"{r['status_code'] or '-'} {r['error_code']}" for r in records if not r["ok"])),
        "latency_s": percentiles([r["latency_s"] for r in ok]),
        "first_progress_s": percentiles([r["first_progress_s"] for r in ok if r["first_progress_s"] is not None]),
        "images": images,
        "video_seconds": round(video_s, 3),
        "output_bytes": sum(o["bytes"] for r in ok for o in r["outputs"]),
        "busy_s": round(busy, 3),
        "images_per_minute": round(images / busy * 60, 3) if busy > 0 else None,
    }
    summary["cost"] = _table_cost(ok, dialect_of, prices) if cost_basis == "table" else _gpu_cost(
        images, video_s, busy, gpu)
    return summary


def _table_cost(ok: list[dict[str, Any]], dialect_of: dict[str, str], prices: PriceTable) -> dict[str, Any]:
    total, priced, rows, unpriced = 0.0, 0, {}, set()
    for r in ok:
        row = prices.find(dialect_of[r["payload"]], r["model"], r["tier"])
        if row is None:
            unpriced.add(f"{dialect_of[r['payload']]} {r['model']} {r['tier'] or '*'}")
            continue
        total += row.usd * (r["video_seconds"] if row.per == "second" else r["images"])
        priced += r["images"]
        rows[f"{row.dialect} {row.model} {row.tier}"] = row.model_dump()
    return {"basis": "price table", "total_usd": round(total, 4), "priced_images": priced,
            "usd_per_image": round(total / priced, 5) if priced else None, "rows": list(rows.values()),
            "unpriced": sorted(unpriced)}


def _gpu_cost(images: int, video_s: float, busy: float, gpu: GpuCost) -> dict[str, Any]:
    total = gpu.usd_for(busy)
    return {"basis": gpu.describe(), "busy_s": round(busy, 3), "total_usd": None if total is None else round(total, 4),
            "usd_per_image": round(total / images, 5) if total is not None and images else None,
            "usd_per_video_second": round(total / video_s, 5) if total is not None and video_s else None,
            "gpu_seconds_per_image": round(busy * gpu.gpus / images, 3) if images else None}
