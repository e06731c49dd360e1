"""The package's own configuration, read once per test session (tests measure against what ships)."""

from __future__ import annotations

import functools

from server.config import DarkroomConfig


@functools.cache
def packaged_config() -> DarkroomConfig:
    """configs/ as shipped, parsed once."""
    return DarkroomConfig.packaged()
