"""Which weight variant and placement each weights entry runs at on a card: bytes and seconds in, a plan out.

For every variant that meets the quality floor and whose kernels the card runs, the plan takes the placement the
residency policy would (resident, else model offload, else group offload: `policy.offload_need`) and the seconds
that placement costs on that card; the fastest wins (ties: the higher quality, then fewer bytes). An operator's pin
skips the choice. Pure functions over plain data: the worker, `darkroom doctor`, the simulator and the README's
"Which GPU do I need?" table all call them.

Seconds: the family's bf16 job on one H100 (configs/costs.toml) / the card's bf16 speed / the variant's speed on
the card (configs/cards.toml), then the placement's traffic over the host link: model offload moves every
component once per call; group offload streams the denoisers once per step, overlapped with compute.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.variants import QUALITY_FLOORS, VARIANTS, meets_floor, why_not_on
from server.engine.policy import GB, ModelFootprint, Placement, offload_need


@dataclass(frozen=True)
class CardProfile:
    """One kind of GPU (or the CPU) as the planner sees it."""

    name: str
    label: str
    memory_gb: float | None
    """None: no managed budget (a CPU)."""
    capability: tuple[int, int] | None
    bf16_speed: float
    """bf16 denoising speed relative to one H100 SXM."""
    pcie_gb_per_s: float
    variant_speed: Mapping[str, float] = field(default_factory=dict)
    """Each variant's speed relative to bf16 on this card, weights resident (absent: not offered here)."""

    def budget(self, reserve_gb: float) -> int | None:
        """Bytes weights and activations may use (memory less the reserve); None on a CPU."""
        return None if self.memory_gb is None else int((self.memory_gb - reserve_gb) * GB)

    def speed_of(self, variant: str) -> float | None:
        """The variant's relative speed here (bf16 is 1.0); None when this card's table does not list it."""
        return 1.0 if variant == "bf16" else self.variant_speed.get(variant)


def load_cards(path: Path) -> dict[str, CardProfile]:
    """Parse the config dir's cards.toml."""
    raw = tomllib.loads(path.read_text())
    cards: dict[str, CardProfile] = {}
    for name, body in raw.get("cards", {}).items():
        unknown = set(body.get("variant_speed", {})) - set(VARIANTS)
        if unknown:
            raise ValueError(f"{path.name}: cards.{name} lists unknown variants {sorted(unknown)}")
        cap = body.get("capability")
        cards[name] = CardProfile(name, body["label"], body.get("memory_gb"), tuple(cap) if cap else None,  # type: ignore[arg-type]
                                  float(body["bf16_speed"]), float(body["pcie_gb_per_s"]),
                                  dict(body.get("variant_speed", {})))
    return cards


_NAME_HINTS = (("4090", "rtx4090"), ("5090", "rtx5090"), ("6000 ada", "rtx6000-ada"), ("l40", "rtx6000-ada"),
               ("a6000", "a6000"), ("h100", "h100"), ("h200", "h200"))


def card_for(cards: Mapping[str, CardProfile], device_name: str | None, memory_gb: float | None,
             capability: tuple[int, int] | None) -> CardProfile:
    """The profile of a real device: the listed card its name matches (with the device's own memory), else the
    listed card of the nearest capability with this device's memory; the CPU profile when `capability` is None
    (`memory_gb` None: an unmanaged CPU, else the memory limit it runs under)."""
    if capability is None:
        cpu = cards["cpu"]
        return CardProfile(cpu.name, cpu.label, memory_gb, None, cpu.bf16_speed, cpu.pcie_gb_per_s, cpu.variant_speed)
    lowered = (device_name or "").lower()
    for hint, key in _NAME_HINTS:
        if hint in lowered and key in cards:
            base = cards[key]
            break
    else:
        gpus = [c for c in cards.values() if c.capability is not None]
        base = min(gpus, key=lambda c: (abs(c.capability[0] * 10 + c.capability[1]  # type: ignore[index]
                                            - capability[0] * 10 - capability[1]), c.name))
    return CardProfile(base.name, device_name or base.label, memory_gb, capability, base.bf16_speed,
                       base.pcie_gb_per_s, base.variant_speed)


@dataclass(frozen=True)
class VariantOption:
    """One variant of a weights entry: its bytes per component (headers) and the denoisers' share of them."""

    variant: str
    footprint: ModelFootprint
    denoiser_bytes: int
    files_present: bool = True


@dataclass(frozen=True)
class PlanRow:
    """One variant judged on one card."""

    variant: str
    placement: Placement | None
    peak_bytes: int
    seconds: float | None
    weight_bytes: int
    why_not: str | None = None

    def describe(self) -> dict[str, object]:
        """JSON for /api/v1/engine, doctor --json and the simulator."""
        return {"variant": self.variant, "placement": self.placement.value if self.placement else None,
                "peak_gb": round(self.peak_bytes / GB, 1), "weights_gb": round(self.weight_bytes / GB, 1),
                "seconds": None if self.seconds is None else round(self.seconds, 1), "why_not": self.why_not}


@dataclass(frozen=True)
class VariantPlan:
    """The chosen variant of a weights entry on a card, every candidate's row, and the loader's order."""

    chosen: PlanRow | None
    rows: tuple[PlanRow, ...]
    order: tuple[str, ...]
    """Variants to try at load, best first: the first that loads on the device wins (the next ones are the
    fallbacks when a package or file turns out to be missing); a pin is alone here."""
    pinned: bool = False
    floor: str = "8bit"


def placement_seconds(card: CardProfile, variant: str, placement: Placement, bf16_h100_s: float, steps: int,
                      option: VariantOption) -> float:
    """Seconds of one job of `bf16_h100_s` (on an H100 at bf16) with this variant and placement on `card`."""
    speed = card.speed_of(variant) or 1.0
    compute = bf16_h100_s / card.bf16_speed / speed
    link = card.pcie_gb_per_s * GB
    if placement is Placement.RESIDENT:
        return compute
    if placement is Placement.MODEL_OFFLOAD:
        return compute + option.footprint.bytes / link
    others = option.footprint.bytes - option.denoiser_bytes
    return max(compute, steps * option.denoiser_bytes / link) + others / link


def plan_variants(card: CardProfile, options: Sequence[VariantOption], floor: str, activation_bytes: int,
                  bf16_h100_s: float, steps: int, reserve_gb: float = 2.0, pinned: str | None = None,
                  installed: Collection[str] | None = None) -> VariantPlan:
    """Judge every option on `card` and choose (see the module's docstring). `installed`: the packages of the
    machine the card is in (None: a card profile, assumed to have them)."""
    if floor not in QUALITY_FLOORS:
        raise ValueError(f"unknown quality floor {floor!r}; use one of {', '.join(QUALITY_FLOORS)}")
    budget = card.budget(reserve_gb)
    rows: list[PlanRow] = []
    for option in options:
        v = VARIANTS[option.variant]
        why = None
        if pinned is not None and option.variant != pinned:
            why = f"the operator pinned {pinned}"
        elif pinned is None and not meets_floor(v, floor):
            why = f"below this weights entry's quality floor ({floor})"
        why = why or why_not_on(v, card.capability, installed, option.files_present)
        if why is None and card.speed_of(option.variant) is None:
            why = f"not offered on {card.label} (no kernels for it in cards.toml)"
        need = offload_need(option.footprint, activation_bytes)
        placement = Placement.RESIDENT if budget is None else next((p for p in Placement if need[p] <= budget), None)
        if why is None and placement is None:
            why = (f"needs {need[Placement.GROUP_OFFLOAD] / GB:.1f} GB even with group offload; {card.label} has "
                   f"{(budget or 0) / GB:.1f} GB to give")
        if why is not None or placement is None:
            rows.append(PlanRow(option.variant, None, 0, None, option.footprint.bytes, why))
            continue
        rows.append(PlanRow(option.variant, placement, need[placement],
                            placement_seconds(card, option.variant, placement, bf16_h100_s, steps, option),
                            option.footprint.bytes))
    if pinned is not None and pinned not in {o.variant for o in options}:
        rows.append(PlanRow(pinned, None, 0, None, 0, f"{pinned} is not available for these weights (the family "
                            "cannot load it, or the manifest declares no files of it)"))
    runnable = sorted((r for r in rows if r.seconds is not None),
                      key=lambda r: (round(r.seconds or 0.0, 3), -QUALITY_FLOORS.index(VARIANTS[r.variant].quality),
                                     r.weight_bytes))
    rest = [r for r in rows if r.seconds is None]
    order = tuple(r.variant for r in runnable) or ((pinned,) if pinned else ())
    return VariantPlan(runnable[0] if runnable else None, tuple(runnable + rest), order, pinned is not None, floor)
