"""Smart sampling of the expensive detectors: cheap ones always run; expensive ones on a share of
texts that falls as the guardian falls behind, and on every text of a tenant flagged recently.

* :class:`LagSampler` maps consumer lag (records not yet judged) to a rate: 1.0 up to `lag_low`,
  `floor` from `lag_high` on, linear in between.
* :func:`is_sampled` decides per request id by hashing it, so the choice is reproducible (the same
  request is sampled the same way by every replica and after a replay).
* :class:`FlaggedTenants` remembers tenants with a non-`allow` verdict for `window_s` seconds, in
  Redis (`<prefix>:guardian:flagged:<tenant>` with a TTL) so every guardian replica agrees, and in
  this process (so a Redis outage does not lower their coverage).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["FlaggedTenants", "LagSampler", "is_sampled"]

log = logging.getLogger(__name__)


class LagSampler:
    """Lag -> sample rate of the expensive detectors."""

    def __init__(self, *, floor: float, lag_low: int, lag_high: int) -> None:
        if not 0.0 <= floor <= 1.0:
            raise ValueError("floor must be in [0, 1]")
        if lag_high <= lag_low:
            raise ValueError("lag_high must be above lag_low")
        self.floor = floor
        self.lag_low = lag_low
        self.lag_high = lag_high

    def rate(self, lag: int) -> float:
        if lag <= self.lag_low:
            return 1.0
        if lag >= self.lag_high:
            return self.floor
        fraction = (lag - self.lag_low) / (self.lag_high - self.lag_low)
        return 1.0 - fraction * (1.0 - self.floor)


def is_sampled(request_id: str, rate: float) -> bool:
    """Whether `request_id` falls in a `rate` sample (deterministic: a hash of the id)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    point = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / 2**64
    return point < rate


class FlaggedTenants:
    """Tenants with a recent non-`allow` verdict."""

    def __init__(self, redis: aioredis.Redis | None, *, prefix: str, window_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window_s = window_s
        self._local: dict[str, float] = {}
        """Tenant -> monotonic expiry, for what this process saw itself."""

    def _key(self, tenant: str) -> str:
        return f"{self._prefix}:guardian:flagged:{tenant}"

    async def recent(self, tenants: Iterable[str]) -> set[str]:
        """Which of `tenants` were flagged within the window (by any replica)."""
        wanted = sorted(set(tenants))
        at = time.monotonic()
        found = {t for t in wanted if self._local.get(t, 0.0) > at}
        rest = [t for t in wanted if t not in found]
        if rest and self._redis is not None:
            try:
                values = await self._redis.mget([self._key(t) for t in rest])
            except (RedisError, OSError):
                # Safe: falls back to what this replica saw; sampling then covers fewer tenants
                # fully for a while, but every text still gets the cheap detectors.
                log.warning("could not read flagged tenants from Redis", exc_info=True)
                return found
            found.update(t for t, v in zip(rest, values) if v is not None)
        return found

    async def mark(self, tenants: Iterable[str]) -> None:
        """Remember `tenants` as flagged for the window (extends it when already flagged)."""
        marked = set(tenants)
        if not marked:
            return
        expiry = time.monotonic() + self._window_s
        for tenant in marked:
            self._local[tenant] = expiry
        if len(self._local) > 10_000:  # forget expired ones so the map stays small
            at = time.monotonic()
            self._local = {t: e for t, e in self._local.items() if e > at}
        if self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for tenant in marked:
                    pipe.set(self._key(tenant), b"1", ex=self._window_s)
                await pipe.execute()
        except (RedisError, OSError):
            # Safe: this replica still remembers them; others learn on their own flags.
            log.warning("could not record flagged tenants in Redis", exc_info=True)
