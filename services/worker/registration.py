"""Keeps this worker's entry in the Redis worker registry (shared.worker_registry) up to date.

Registered only once the model is loaded; refreshed by a heartbeat (a third of the TTL); rewritten
at once when draining starts, so batchers stop sending work; deleted at shutdown. Redis being
unreachable never stops the worker: the heartbeat logs and retries, and a worker that cannot
deregister disappears when its TTL runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from shared.worker_registry import WorkerInfo, WorkerRegistry

__all__ = ["Registration"]

log = logging.getLogger(__name__)

#: Longest a shutdown waits for Redis to delete the entry.
_DEREGISTER_TIMEOUT_S = 3.0


class Registration:
    """Registers `current()` with a heartbeat until stopped."""

    def __init__(self, redis_url: str, prefix: str, ttl_s: float, current: Callable[[], WorkerInfo]) -> None:
        self._redis = aioredis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self.registry = WorkerRegistry(self._redis, prefix=prefix, ttl_s=ttl_s)
        self._current = current
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.registry.heartbeat(self._current), name="worker-heartbeat")

    async def refresh_now(self) -> None:
        """Rewrite the entry at once and announce it (e.g. draining started)."""
        try:
            await self.registry.register(self._current(), announce=True)
        except Exception:
            # Safe: the heartbeat writes the same entry again within a third of the TTL.
            log.warning("could not update the registry entry", exc_info=True)

    async def stop(self) -> None:
        """Stop the heartbeat and delete the entry."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            try:
                await asyncio.wait_for(self.registry.deregister(self._current().worker_id), _DEREGISTER_TIMEOUT_S)
            except Exception:
                # Safe: the entry expires with its TTL; batchers then drop this worker anyway.
                log.warning("could not deregister; the registry entry will expire by itself", exc_info=True)
        await self._redis.aclose()
