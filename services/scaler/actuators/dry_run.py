"""`dry-run`: decisions are published as advice; nothing is changed."""

from __future__ import annotations

__all__ = ["DryRunActuator"]


class DryRunActuator:
    """Knows nothing, changes nothing."""

    name = "dry-run"

    async def current(self) -> int | None:
        return None

    async def apply(self, desired: int) -> None:
        return None

    async def close(self) -> None:
        return None
