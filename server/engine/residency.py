"""Which loaded models to evict so the next job fits its device: plain bytes in, names out.

This is the minimal policy the serving core needs so that image and video
models can share a GPU without running it out of memory: least recently used
first, evicting only as much as the next job needs (its weights if not yet
loaded, plus its activation estimate). The VRAM-aware residency (pinned RAM
tier, offload fallbacks, cost-aware choice) replaces it behind this function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A model loaded on a device and the bytes its weights take there."""

    name: str
    bytes: int


def plan_evictions(loaded_lru: Sequence[Resident], target: str, target_weight_bytes: int, activation_bytes: int,
                   budget: int | None) -> list[str]:
    """Names to evict, least recently used first, so `target` (loaded or not) plus its activations fit `budget`.

    `loaded_lru` is oldest first. With no budget (CPU: host RAM is not managed
    here) nothing is evicted. If even an empty device cannot hold the job,
    everything else is evicted and the job is tried anyway; it then fails
    cleanly on out-of-memory rather than never running.
    """
    if budget is None:
        return []
    others = [r for r in loaded_lru if r.name != target]
    # Everything loaded counts, the target too when it is already there (then target_weight_bytes is 0).
    used = sum(r.bytes for r in loaded_lru)
    need = activation_bytes + target_weight_bytes
    evict: list[str] = []
    for resident in others:
        if used + need <= budget:
            break
        evict.append(resident.name)
        used -= resident.bytes
    return evict


def fits(loaded: Sequence[Resident], weight_bytes: int, budget: int | None) -> bool:
    """Whether `weight_bytes` more can be loaded without evicting anything (always, without a budget)."""
    return budget is None or sum(r.bytes for r in loaded) + weight_bytes <= budget
