"""Each hosted provider's model names -> darkroom ids, from configs/dialects.toml (exact match)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from server.errors import ApiError, ErrorCode


class ModelNames:
    """Provider name tables; `resolve` turns a provider's model name into a darkroom id."""

    def __init__(self, tables: dict[str, dict[str, str]]) -> None:
        self.tables = tables

    @classmethod
    def load(cls, known_ids: set[str], path: Path) -> ModelNames:
        """Read the file; every target must be a served id."""
        raw = tomllib.loads(path.read_text())
        tables: dict[str, dict[str, str]] = {}
        for dialect, body in raw.items():
            # Nested tables (openai.images) flatten to "openai.images".
            if all(isinstance(v, dict) for v in body.values()):
                for sub, names in body.items():
                    tables[f"{dialect}.{sub}"] = dict(names)
            else:
                tables[dialect] = dict(body)
        for dialect, names in tables.items():
            unknown = sorted(t for t in names.values() if t not in known_ids)
            if unknown:
                raise ValueError(f"configs/dialects.toml [{dialect}] maps to unknown ids {unknown}")
        return cls(tables)

    def names(self, dialect: str, served: set[str] | None = None) -> list[str]:
        """The provider's names darkroom answers to (only those mapped to `served` ids, when given)."""
        table = self.tables.get(dialect, {})
        return sorted(n for n, target in table.items() if served is None or target in served)

    def resolve(self, dialect: str, name: str, field: str = "model") -> str:
        """The darkroom id for `name`; 422 unknown_model listing the provider's names otherwise."""
        try:
            return self.tables[dialect][name]
        except KeyError:
            raise ApiError(422, ErrorCode.UNKNOWN_MODEL, f"unknown model {name[:100]!r}; this server answers to "
                           f"{', '.join(self.names(dialect))}", field) from None
