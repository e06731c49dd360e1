"""The batch key: the fields two renders must share to run together, as a small typed value.

It travels through the job store as text (`encode`), and the scheduler compares keys field by field, so the
reason two queued requests could not share a batch is a field's name ("height", "steps"), never a position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class BatchKey:
    """What must match for renders to share a batch (prompt, seed and source pixels may differ)."""

    family: str
    shared_call: bool
    """Whether renders with this key can share one pipeline call; otherwise they run one after another."""
    task: str
    width: int
    height: int
    steps: int
    guidance: float
    strength: float
    sources: int
    references: int
    negative_prompt: bool = False
    """Whether a negative prompt is given (it switches on true CFG in guidance-distilled families)."""
    preset: str = ""
    """The acceleration preset the render runs with (cached and uncached renders never share a call)."""
    source_shape: str = ""
    """For families that condition on the source's own shape: its size (their edits batch only alike)."""
    frames: int = 0
    fps: float = 0.0
    audio: bool = False

    def encode(self) -> str:
        """`name=value|...`: stored with the job, readable in the database."""
        return "|".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in asdict(self).items())

    @classmethod
    def decode(cls, text: str) -> BatchKey | None:
        """The key `encode` wrote; None for text in any other shape (a job from an older release)."""
        try:
            raw = dict(part.split("=", 1) for part in text.split("|"))
            values = {}
            for f in fields(cls):
                v = raw[f.name]
                values[f.name] = (v == "1") if f.type in ("bool", bool) else int(v) if f.type in ("int", int) \
                    else float(v) if f.type in ("float", float) else v
            return cls(**values)
        except (KeyError, ValueError):
            return None

    def difference(self, other: BatchKey) -> str:
        """The first field in which two keys differ ("same" when they do not)."""
        for f in fields(self):
            if getattr(self, f.name) != getattr(other, f.name):
                return f.name
        return "same"


def key_difference(a: str, b: str) -> str:
    """Why encoded keys `a` and `b` cannot share a batch: the first differing field's name."""
    ka, kb = BatchKey.decode(a), BatchKey.decode(b)
    if ka is None or kb is None:
        return "same" if a == b else "shape"
    return ka.difference(kb)


def shares_calls(encoded: str) -> bool:
    """Whether jobs with this encoded key may share one pipeline call."""
    key = BatchKey.decode(encoded)
    return key is not None and key.shared_call
