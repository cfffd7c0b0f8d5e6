"""`local`: the embedded launcher's worker processes, through a control channel in Redis.

The scaler writes the desired count to ``<prefix>:scaler:desired:worker`` and publishes it on
``<prefix>:scaler:desired``; the launcher's WorkerReconciler (shared/launcher/worker_reconciler.py)
starts or drains workers to match and writes what it runs to ``<prefix>:scaler:current:worker``.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.scaler.actuators.base import ActuationError
from shared.launcher.worker_reconciler import current_workers_key, desired_workers_channel, desired_workers_key

__all__ = ["LocalActuator"]


class LocalActuator:
    """Talks to the launcher's reconciler through Redis."""

    name = "local"

    def __init__(self, redis: aioredis.Redis, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def current(self) -> int | None:
        try:
            raw = await self._redis.get(current_workers_key(self._prefix))
        except RedisError as exc:
            raise ActuationError(f"redis: {exc}") from exc
        try:
            return None if raw is None else max(0, int(raw))
        except ValueError:
            # Safe: a malformed value means "unknown"; the workers reporting are counted instead.
            return None

    async def apply(self, desired: int) -> None:
        try:
            await self._redis.set(desired_workers_key(self._prefix), int(desired))
            await self._redis.publish(desired_workers_channel(self._prefix), str(int(desired)))
        except RedisError as exc:
            raise ActuationError(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
