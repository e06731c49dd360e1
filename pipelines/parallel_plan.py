"""How one pipeline call is spread over a gang's ranks, as plain data (torch-free: the scheduler and the API read
it; pipelines/parallel.py applies it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelPlan:
    """How one call is spread: the degrees multiply to the gang's size."""

    ulysses: int = 1
    ring: int = 1
    cfg: int = 1
    vae_tiling: bool = False
    uneven: bool = False
    """Sequences of any length (diffusers' ulysses_anything / ring_anything): for families whose sequence holds
    unpadded text tokens."""

    @property
    def gpus(self) -> int:
        """Ranks the plan needs."""
        return self.ulysses * self.ring * self.cfg

    def record(self) -> dict[str, Any]:
        """What the task record says ran (`runtime.parallel`)."""
        return {"gpus": self.gpus, "ulysses": self.ulysses, "ring": self.ring, "cfg": self.cfg,
                "vae": "tiled" if self.vae_tiling else "whole", "uneven": self.uneven}

    @classmethod
    def of(cls, record: dict[str, Any]) -> ParallelPlan:
        """The plan a record describes."""
        return cls(int(record["ulysses"]), int(record["ring"]), int(record["cfg"]), record.get("vae") == "tiled",
                   bool(record.get("uneven")))
