"""The worker registry in Redis: workers announce themselves, batchers discover them.

Each worker keeps one key ``<prefix>:worker:<worker_id>`` holding a :class:`WorkerInfo` as JSON with
a TTL, rewritten every heartbeat, and deletes it when it shuts down. A worker that dies without
deregistering disappears when its TTL runs out. Every change is also announced on the pub/sub
channel ``<prefix>:workers``, so batchers refresh at once instead of waiting for their next
periodic scan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["WorkerInfo", "WorkerRegistry"]

log = logging.getLogger(__name__)


class WorkerInfo(BaseModel):
    """What a worker tells the cluster about itself."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    worker_id: str = Field(min_length=1, max_length=256)
    """Unique id (also the registry key)."""
    address: str = Field(min_length=3, max_length=256)
    """gRPC address `host:port`."""
    model: str = Field(min_length=1, max_length=256)
    """Model name it serves."""
    backend: str = Field(min_length=1, max_length=64)
    """`transformers`, `vllm` or `simulated`."""
    capacity: int = Field(ge=1)
    """Sequences it runs at once at most (its batch size)."""
    running: int = Field(0, ge=0)
    """Sequences running at the last heartbeat."""
    waiting: int = Field(0, ge=0)
    """Sequences waiting at the last heartbeat."""
    simulated: bool = False
    """True for the simulated backend."""
    draining: bool = False
    """Finishing in-flight work before it stops; send it nothing new."""
    max_model_len: int = Field(2048, ge=1)
    """Longest prompt + generation in tokens."""
    updated_at: float = Field(default_factory=time.time)
    """Time of the last heartbeat."""
    batched_events: bool = False
    """Serves `GenerateBatched` (several events per stream message); batchers call `Generate` on
    workers that do not say so (those of an earlier version)."""


class WorkerRegistry:
    """Reads and writes the registry; one instance per process."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "lgc", ttl_s: float = 10.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl_s = ttl_s

    @property
    def channel(self) -> str:
        return f"{self._prefix}:workers"

    def _key(self, worker_id: str) -> str:
        return f"{self._prefix}:worker:{worker_id}"

    async def register(self, info: WorkerInfo, *, announce: bool = False) -> None:
        """Write (or refresh) `info` with the TTL; `announce` tells batchers at once."""
        await self._redis.set(self._key(info.worker_id), info.model_dump_json(), px=int(self.ttl_s * 1000))
        if announce:
            await self._redis.publish(self.channel, f"up {info.worker_id}")

    async def deregister(self, worker_id: str) -> None:
        """Remove a worker and tell batchers at once."""
        await self._redis.delete(self._key(worker_id))
        await self._redis.publish(self.channel, f"down {worker_id}")

    async def list(self) -> list[WorkerInfo]:
        """Every registered worker, sorted by id."""
        keys = [k async for k in self._redis.scan_iter(match=self._key("*"), count=500)]
        if not keys:
            return []
        values = await self._redis.mget(keys)
        workers = []
        for key, raw in zip(keys, values, strict=True):
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                workers.append(WorkerInfo.model_validate_json(raw))
            except ValidationError:
                # Safe to skip: a malformed entry is not a usable worker; its TTL removes it.
                log.warning("ignoring a malformed registry entry", extra={"key": str(key)})
        return sorted(workers, key=lambda w: w.worker_id)

    async def heartbeat(self, current: Callable[[], WorkerInfo], interval_s: float | None = None) -> None:
        """Re-register `current()` every `interval_s` (default a third of the TTL) until cancelled."""
        interval = interval_s if interval_s is not None else self.ttl_s / 3
        first = True
        while True:
            try:
                await self.register(current(), announce=first)
                first = False
            except asyncio.CancelledError:
                raise
            except Exception:
                # Safe: the entry lives for the TTL; the next beat (a third of it later) retries.
                log.warning("worker heartbeat failed", exc_info=True)
            await asyncio.sleep(interval)

    async def watch(self, on_change: Callable[[], Awaitable[None]], refresh_s: float = 5.0) -> None:
        """Call `on_change` when a worker comes or goes, and at least every `refresh_s` (for
        workers whose TTL ran out, which publish nothing). Blocks on Redis pub/sub, no polling."""
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self.channel)
        try:
            while True:
                await on_change()
                try:
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=refresh_s)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Safe: a broken subscription only delays discovery to the next refresh.
                    log.warning("worker registry subscription failed", exc_info=True)
                    await asyncio.sleep(refresh_s)
        finally:
            await pubsub.aclose()
