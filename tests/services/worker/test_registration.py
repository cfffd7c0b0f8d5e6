"""Registration in the real Redis: heartbeat, immediate refresh, deregistration, Redis down."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from services.worker.registration import Registration
from shared.settings import ClusterSettings
from shared.worker_registry import WorkerInfo, WorkerRegistry


async def test_heartbeat_refresh_and_deregister(cluster_settings: ClusterSettings) -> None:
    state = {"running": 0}

    def current() -> WorkerInfo:
        return WorkerInfo(worker_id="w-reg", address="h:1", model="m", backend="simulated", capacity=2, **state)

    registration = Registration(cluster_settings.redis_url, cluster_settings.topic_prefix, 1.5, current)
    client = aioredis.from_url(cluster_settings.redis_url)
    registry = WorkerRegistry(client, prefix=cluster_settings.topic_prefix)
    try:
        registration.start()
        async with asyncio.timeout(5):
            while not await registry.list():
                await asyncio.sleep(0.02)
        # The heartbeat keeps the entry past its TTL and carries the current load.
        state["running"] = 2
        await asyncio.sleep(2.0)
        [info] = await registry.list()
        assert info.running == 2
        state["running"] = 1
        await registration.refresh_now()
        assert (await registry.list())[0].running == 1
        await registration.stop()
        assert await registry.list() == []
    finally:
        await client.aclose()


async def test_redis_down_does_not_raise() -> None:
    def current() -> WorkerInfo:
        return WorkerInfo(worker_id="w", address="h:1", model="m", backend="simulated", capacity=1)

    registration = Registration("redis://127.0.0.1:1/0", "x", 1.0, current)
    registration.start()
    await asyncio.sleep(0.1)
    await registration.refresh_now()
    await asyncio.wait_for(registration.stop(), 10)
