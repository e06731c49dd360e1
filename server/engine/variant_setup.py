"""Plans per weights entry and per id, from a configuration: what the worker loads, what `doctor` and
/api/v1/engine report, and what the simulator and the README's GPU table show for each card.

Options come from one of two places: the weights on disk (each variant's bytes from the file headers:
`header_options`) or the cost table's full-size component bytes (`full_size_options`, for cards this machine
does not have). Either way the choice is `variant_plan.plan_variants`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.registry import family_class
from pipelines.variants import VARIANTS
from server.default_requests import default_params, tiers_below_default
from server.engine.policy import GB, ModelFootprint
from server.engine.variant_plan import (
    CardProfile,
    PlanRow,
    VariantOption,
    VariantPlan,
    placement_seconds,
    plan_variants,
)

if TYPE_CHECKING:
    from pipelines.base import Family
    from server.config import DarkroomConfig


@dataclass(frozen=True)
class IdPlan:
    """One served id on one card: its weights' plan and the id's own default job there."""

    model_id: str
    weights: str
    plan: VariantPlan
    seconds: float | None
    """Estimated seconds of the id's default request with the chosen variant and placement."""
    tier: str | None = None
    """When the default tier does not fit the card at any variant: the largest listed tier that does (the plan and
    seconds are for it)."""

    def describe(self) -> dict[str, Any]:
        """JSON for /api/v1/engine, doctor --json and the simulator."""
        chosen = self.plan.chosen
        return {"model": self.model_id, "weights": self.weights, "floor": self.plan.floor,
                "pinned": self.plan.pinned, "variant": chosen.variant if chosen else None,
                "placement": chosen.placement.value if chosen and chosen.placement else None,
                "peak_gb": round(chosen.peak_bytes / GB, 1) if chosen else None,
                "seconds": None if self.seconds is None else round(self.seconds, 1), "tier": self.tier,
                "why_not": None if chosen else "; ".join(dict.fromkeys(
                    r.why_not or "" for r in self.plan.rows if not self.plan.pinned or r.variant == self.plan.order[0]))}


def _ids_on(config: DarkroomConfig, weights: str) -> list[Any]:
    return [s for s in [*config.catalog.specs(), *config.catalog.video_specs()] if s.weights == weights]


def full_size_options(config: DarkroomConfig, weights: str) -> list[VariantOption]:
    """Every variant of `weights` at full size, from the cost table's component bytes (files assumed pulled)."""
    entry = config.manifest[weights]
    cost = config.costs.families[entry.family]
    bf16_only = bool(entry.addons) and family_class(entry.family).addons_block_variants
    out = []
    for name, v in VARIANTS.items():
        if (v.from_files and name not in entry.variants) or (bf16_only and name != "bf16"):
            continue
        comps = cost.variant_components(v.denoiser_bits, v.encoder_bits)
        denoiser = sum(b for b, k in zip(comps, cost.kinds, strict=True) if k == "denoiser")
        out.append(VariantOption(name, ModelFootprint(weights, comps), denoiser))
    return out


def header_options(fam: Family, declared: Collection[str]) -> list[VariantOption]:
    """Every variant the loaded family's loader reads, with bytes from its files' headers; a from-files variant
    only when the manifest declares it for these weights (`declared`) or its files are here."""
    from weights.locate import variant_files

    supported = fam.supported_variants()
    out = []
    for name, v in VARIANTS.items():
        if name not in supported:
            continue
        present = not v.from_files or bool(variant_files(fam.model_dir, name))
        if v.from_files and not present and name not in declared:
            continue
        comps = fam.components(name)
        out.append(VariantOption(name, ModelFootprint(fam.model_dir.name, tuple(c.bytes for c in comps if c.bytes)),
                                 sum(c.bytes for c in comps if c.kind == "denoiser"), present))
    return out


def _default_job(config: DarkroomConfig, spec: Any, tier: str | None = None) -> tuple[int, float, int]:
    """(activation bytes, bf16 seconds on one H100, steps) of `spec`'s default request (at `tier` when given)."""
    fam = family_class(spec.family)
    params = default_params(spec, fam, tier=tier)
    activation = fam.activation_bytes(params, 1, config.coefficients(fam.name))
    cost = config.costs.families[fam.name]
    steps = fam.denoising_steps(params)
    seconds = cost.job_seconds(steps, params.width * params.height, params.num_frames or 0, params.num_images)
    return activation, seconds, steps


def plan_weights(config: DarkroomConfig, weights: str, card: CardProfile, options: list[VariantOption],
                 reserve_gb: float = 2.0, installed: Collection[str] | None = None) -> VariantPlan:
    """The plan of `weights` on `card`: sized for the largest default request among the ids served on it, within
    their strictest quality floor, or the operator's pin."""
    jobs = [_default_job(config, s) for s in _ids_on(config, weights)] or [(0, 0.0, 1)]
    activation = max(j[0] for j in jobs)
    _, seconds, steps = max(jobs, key=lambda j: j[1])
    return plan_variants(card, options, config.acceleration.quality_floor(weights), activation, seconds, steps,
                         reserve_gb, config.acceleration.variant_pin(weights), installed)


def plan_ids(config: DarkroomConfig, card: CardProfile, plans: dict[str, VariantPlan],
             options: dict[str, list[VariantOption]], reserve_gb: float = 2.0) -> list[IdPlan]:
    """Each served id with its weights' plan and its own default job's seconds on `card`; an id whose default
    tier fits at no variant is planned at the largest listed tier that does."""
    out = []
    for spec in [*config.catalog.specs(), *config.catalog.video_specs()]:
        plan, tier = plans[spec.weights], None
        if plan.chosen is None:
            for smaller in tiers_below_default(spec):
                activation, bf16_s, steps = _default_job(config, spec, smaller)
                fallback = plan_variants(card, options[spec.weights], plan.floor, activation, bf16_s, steps,
                                         reserve_gb, config.acceleration.variant_pin(spec.weights))
                if fallback.chosen is not None:
                    plan, tier = fallback, smaller
                    break
        chosen: PlanRow | None = plan.chosen
        seconds = None
        if chosen is not None and chosen.placement is not None:
            option = next(o for o in options[spec.weights] if o.variant == chosen.variant)
            _, bf16_s, steps = _default_job(config, spec, tier)
            seconds = placement_seconds(card, chosen.variant, chosen.placement, bf16_s, steps, option)
        out.append(IdPlan(spec.id, spec.weights, plan, seconds, tier))
    return out


def card_table(config: DarkroomConfig, card: CardProfile, reserve_gb: float = 2.0) -> list[IdPlan]:
    """Every served id on `card` at full size (the simulator's and the README's table)."""
    options = {w: full_size_options(config, w) for w in sorted(config.weights_needed())}
    plans = {w: plan_weights(config, w, card, opts, reserve_gb) for w, opts in options.items()}
    return plan_ids(config, card, plans, options, reserve_gb)
