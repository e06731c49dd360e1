"""Cost per image: the hosted side from a dated price table (configs/prices.toml), the local side from what its
GPUs cost per hour times the seconds it measurably spent (plus electricity when given)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Price(BaseModel):
    """One row of the price table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dialect: str
    model: str
    tier: str = "*"
    usd: float = Field(ge=0.0)
    per: Literal["image", "second"]
    as_of: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    source: str = Field(min_length=1)
    note: str | None = None


class PriceTable:
    """Rows looked up by (dialect, model, tier); a "*" row stands for tiers no row names."""

    def __init__(self, rows: list[Price], path: Path | None = None) -> None:
        self.rows = rows
        self.path = path

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        """Read and check the table (every row dated and sourced)."""
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read the price table {path}: {exc}") from None
        rows = []
        for n, row in enumerate(data.get("price", []), start=1):
            try:
                rows.append(Price.model_validate(row))
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ValueError(f"{path.name}: price #{n}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
                                 ) from None
        return cls(rows, path)

    def find(self, dialect: str, model: str, tier: str | None) -> Price | None:
        """The row for exactly this tier, else the model's "*" row, else None."""
        matches = [r for r in self.rows if r.dialect == dialect and r.model == model]
        return next((r for r in matches if tier is not None and r.tier == tier), None) or next(
            (r for r in matches if r.tier == "*"), None)


@dataclass(frozen=True)
class GpuCost:
    """What the local side's machine costs while it works."""

    usd_per_hour: float | None
    gpus: int = 1
    watts: float | None = None
    usd_per_kwh: float | None = None

    def usd_for(self, seconds: float) -> float | None:
        """Cost of `seconds` of the machine (None when no hourly price was given)."""
        if self.usd_per_hour is None:
            return None
        cost = self.usd_per_hour * self.gpus * seconds / 3600.0
        if self.watts is not None and self.usd_per_kwh is not None:
            cost += self.watts * self.gpus / 1000.0 * seconds / 3600.0 * self.usd_per_kwh
        return cost

    def describe(self) -> str:
        """The cost basis in words, for the report."""
        if self.usd_per_hour is None:
            return "no GPU price given (--gpu-usd-per-hour)"
        text = f"${self.usd_per_hour:g}/h × {self.gpus} GPU(s)"
        if self.watts is not None and self.usd_per_kwh is not None:
            text += f" + {self.watts:g} W × ${self.usd_per_kwh:g}/kWh per GPU"
        return text
