"""configs/costs.toml, typed: transfer rates and per-family seconds the scheduler and simulator reason with."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from server.engine.policy import GB, Transfer


@dataclass(frozen=True)
class FamilyCost:
    """One family's full-size costs (bf16, one GPU; see the file's header for how calibrated they are)."""

    name: str
    components: tuple[int, ...]
    job_s: float
    ref_steps: int
    batch_marginal: float
    activation: int
    ref_pixels: int = 1024 * 1024
    ref_frames: int = 1
    kinds: tuple[str, ...] = ()
    """denoiser | encoder | other, per component."""
    linear_share: tuple[float, ...] = ()
    """The share of each component's bytes in linear-layer weights (what a weight variant quantizes)."""

    def variant_components(self, denoiser_bits: float, encoder_bits: float) -> tuple[int, ...]:
        """Component bytes with denoisers' and encoders' linear weights at these bits (16: unchanged)."""
        bits = {"denoiser": denoiser_bits, "encoder": encoder_bits}
        return tuple(int(b * (1 - share + share * bits.get(kind, 16.0) / 16))
                     for b, kind, share in zip(self.components, self.kinds, self.linear_share, strict=True))

    def batch_seconds(self, n: int) -> float:
        """Seconds for a batch of n reference jobs."""
        return self.job_s * (1 + (n - 1) * self.batch_marginal)

    def job_seconds(self, steps: int, pixels: int, frames: int = 0, images: int = 1) -> float:
        """Seconds for one request: the reference job scaled by steps and by pixels x frames."""
        work = max(pixels, 1) * max(frames, 1) / (self.ref_pixels * self.ref_frames)
        return self.batch_seconds(images) * steps / self.ref_steps * work


@dataclass(frozen=True)
class Costs:
    """Everything in configs/costs.toml."""

    transfer: Transfer
    families: dict[str, FamilyCost]


def load_costs(path: Path) -> Costs:
    """Parse the config dir's costs.toml."""
    raw = tomllib.loads(path.read_text())
    families = {
        name: FamilyCost(name, tuple(int(g * GB) for g in body["components_gb"]), float(body["job_s"]),
                         int(body["ref_steps"]), float(body["batch_marginal"]), int(body["activation_gb"] * GB),
                         int(body.get("ref_pixels", 1024 * 1024)), int(body.get("ref_frames", 1)),
                         tuple(body["kinds"]), tuple(float(x) for x in body["linear_share"]))
        for name, body in raw["families"].items()
    }
    for fam in families.values():
        if not len(fam.kinds) == len(fam.linear_share) == len(fam.components):
            raise ValueError(f"{path.name}: families.{fam.name} needs one kind and one linear_share per component")
    return Costs(Transfer(**raw["transfer"]), families)
