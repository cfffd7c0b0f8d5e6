"""The one interface every actuator implements."""

from __future__ import annotations

from typing import Protocol

__all__ = ["ActuationError", "Actuator"]


class ActuationError(RuntimeError):
    """The backend refused or could not be reached; the decision loop retries at its next tick."""


class Actuator(Protocol):
    """Applies a desired worker count to a backend."""

    name: str
    """`dry-run`, `local`, `docker` or `kubernetes` (the ScalingDecision's `actuator`)."""

    async def current(self) -> int | None:
        """Workers the backend runs now (None: it does not know; the workers reporting count)."""
        ...

    async def apply(self, desired: int) -> None:
        """Make the backend run `desired` workers (idempotent; may return before they are up)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
