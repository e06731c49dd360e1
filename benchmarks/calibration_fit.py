"""The arithmetic of calibration, apart from any device: fitting the memory coefficients to measured peaks,
checking an estimate against measurements, and writing fitted values back into the TOML files in configs/.

Every family's activation estimate is linear in its two coefficients (see configs/memory.toml):

    estimate = bytes_per_token x T(params) + vae_bytes x V(params)

where T and V are structural (token counts, pixels or voxels) and come from the family's own formula, so the
fit needs only (T, V, measured peak) per grid point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# The bar: an estimate may undershoot a measured peak by at most this share.
MAX_UNDERSHOOT = 0.05


@dataclass(frozen=True)
class PeakSample:
    """One measured render: its structural terms and the device bytes it used beyond the weights."""

    tokens_term: int
    vae_term: int
    measured: int


@dataclass(frozen=True)
class Fit:
    """Fitted coefficients (bytes, rounded up) and how they were scaled to cover every sample."""

    bytes_per_token: int
    vae_bytes: int
    cover_scale: float


def _squared_error(samples: Sequence[PeakSample], a: float, b: float) -> float:
    return sum((a * s.tokens_term + b * s.vae_term - s.measured) ** 2 for s in samples)


def _least_squares(samples: Sequence[PeakSample]) -> tuple[float, float]:
    """Non-negative least squares in two unknowns: the unconstrained solution, else the best single-term fit."""
    stt = sum(s.tokens_term ** 2 for s in samples)
    svv = sum(s.vae_term ** 2 for s in samples)
    stv = sum(s.tokens_term * s.vae_term for s in samples)
    stm = sum(s.tokens_term * s.measured for s in samples)
    svm = sum(s.vae_term * s.measured for s in samples)
    candidates: list[tuple[float, float]] = []
    det = stt * svv - stv * stv
    # Video families' two terms grow together (tokens and voxels both scale with frames x area): a nearly singular
    # system gives wild coefficients, so it is solved jointly only when the grid separates the terms.
    if det > 1e-6 * stt * svv:
        a, b = (stm * svv - svm * stv) / det, (svm * stt - stm * stv) / det
        if a >= 0 and b >= 0:
            candidates.append((a, b))
    if stt > 0:
        candidates.append((max(0.0, stm / stt), 0.0))
    if svv > 0:
        candidates.append((0.0, max(0.0, svm / svv)))
    if not candidates:
        raise ValueError("every sample has zero structural terms: nothing to fit")
    return min(candidates, key=lambda ab: _squared_error(samples, *ab))


def fit_coefficients(samples: Sequence[PeakSample]) -> Fit:
    """Least-squares coefficients, scaled up just enough that the estimate covers every sample.

    Covering the fit grid exactly and checking on a held-out grid (`check_estimates`) keeps the estimate
    conservative without the blanket headroom the uncalibrated defaults carry.
    """
    if not samples:
        raise ValueError("no samples to fit")
    a, b = _least_squares(samples)
    scale = max((s.measured / (a * s.tokens_term + b * s.vae_term) for s in samples
                 if a * s.tokens_term + b * s.vae_term > 0), default=1.0)
    scale = max(scale, 1.0)
    return Fit(math.ceil(a * scale), math.ceil(b * scale), round(scale, 4))


def estimate(fit: Fit, sample: PeakSample) -> int:
    """The fitted estimate for a sample's structural terms."""
    return fit.bytes_per_token * sample.tokens_term + fit.vae_bytes * sample.vae_term


def check_estimates(pairs: Sequence[tuple[int, int]]) -> dict[str, float | bool | int]:
    """(estimate, measured) pairs -> the worst ratio and whether no estimate undershoots by more than 5%."""
    ratios = [est / meas for est, meas in pairs if meas > 0]
    worst = min(ratios, default=1.0)
    return {"points": len(ratios), "worst_ratio": round(worst, 4), "mean_ratio": round(sum(ratios) / len(ratios), 4)
            if ratios else 1.0, "within_5_percent": worst >= 1 - MAX_UNDERSHOOT}


# ---- writing values back into configs/*.toml (comments and layout kept) --------------------------------------

_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*(#.*)?$")


def _section_name(header: str) -> str:
    """`families."wan2.2-ti2v-5b"` -> `families.wan2.2-ti2v-5b`; `"wan2.2-ti2v-5b"` -> `wan2.2-ti2v-5b`."""
    return ".".join(part.strip().strip('"') for part in re.findall(r'"[^"]*"|[^.]+', header))


def set_toml_value(text: str, section: str, key: str, value: float, note: str = "") -> str:
    """Replace `key = ...` inside `[section]` (a dotted name, quotes not needed) with `value`, keeping the rest.

    A key the section lacks is added at the section's end. KeyError when the section is missing.
    """
    lines = text.splitlines(keepends=True)
    start = end = None
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m is None:
            continue
        if start is not None:
            end = i
            break
        if _section_name(m.group("name")) == section:
            start = i
    if start is None:
        raise KeyError(f"no [{section}] section")
    end = len(lines) if end is None else end
    rendered = f"{key} = {value!r}" if isinstance(value, float) else f"{key} = {value}"
    comment = f"  # {note}" if note else ""
    pattern = re.compile(rf"^(\s*){re.escape(key)}\s*=")
    for i in range(start + 1, end):
        if pattern.match(lines[i]):
            newline = "\n" if lines[i].endswith("\n") else ""
            lines[i] = f"{pattern.match(lines[i]).group(1)}{rendered}{comment}{newline}"  # type: ignore[union-attr]
            return "".join(lines)
    # Insert after the section's last non-blank line.
    at = end
    while at > start + 1 and not lines[at - 1].strip():
        at -= 1
    if at > 0 and not lines[at - 1].endswith("\n"):
        lines[at - 1] += "\n"
    lines.insert(at, f"{rendered}{comment}\n")
    return "".join(lines)
