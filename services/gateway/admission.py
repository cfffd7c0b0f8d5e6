"""Admission control: the per-instance bound on requests in flight.

Beyond `gateway_max_inflight` a request is refused at once with 429 + Retry-After instead of being
queued in memory: waiting work belongs in Kafka and in clients (DESIGN.md §4). The later issue's
per-tenant rate limits slot in here as further checks before a permit is handed out.
"""

from __future__ import annotations

from collections.abc import Callable

from services.gateway.errors import TooManyRequestsError

__all__ = ["InflightLimiter", "Permit"]


class Permit:
    """One admitted request; release it exactly when the request is done (idempotent)."""

    def __init__(self, limiter: InflightLimiter) -> None:
        self._limiter = limiter
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release()

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class InflightLimiter:
    """Counts admitted requests and refuses new ones beyond the limit."""

    def __init__(self, limit: int, *, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.inflight = 0
        self._on_change = on_change or (lambda _n: None)

    def acquire(self) -> Permit:
        """Admit a request or raise TooManyRequestsError (429)."""
        if self.inflight >= self.limit:
            raise TooManyRequestsError(
                f"This gateway is serving its maximum of {self.limit} requests at once; retry shortly."
            )
        self.inflight += 1
        self._on_change(self.inflight)
        return Permit(self)

    def _release(self) -> None:
        self.inflight -= 1
        self._on_change(self.inflight)
