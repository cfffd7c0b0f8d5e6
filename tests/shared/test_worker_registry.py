"""Workers register, are listed, expire and are announced, on the real Redis."""

import asyncio

import redis.asyncio as aioredis

from shared.worker_registry import WorkerInfo, WorkerRegistry


def _info(worker_id: str, **kw) -> WorkerInfo:
    return WorkerInfo(worker_id=worker_id, address="127.0.0.1:1", model="m", backend="simulated", capacity=4, **kw)


async def test_register_list_deregister_and_ttl(redis_url, unique_prefix) -> None:
    client = aioredis.from_url(redis_url)
    registry = WorkerRegistry(client, prefix=unique_prefix, ttl_s=0.3)
    try:
        await registry.register(_info("w1"))
        await registry.register(_info("w2", simulated=True))
        assert [w.worker_id for w in await registry.list()] == ["w1", "w2"]
        await registry.deregister("w1")
        assert [w.worker_id for w in await registry.list()] == ["w2"]
        await asyncio.sleep(0.5)  # TTL ran out: a worker that died without deregistering
        assert await registry.list() == []
        await client.set(f"{unique_prefix}:worker:junk", b"{not json")
        assert await registry.list() == []  # malformed entries are skipped
    finally:
        await client.aclose()


async def test_watch_is_woken_by_announcements(redis_url, unique_prefix) -> None:
    client = aioredis.from_url(redis_url)
    registry = WorkerRegistry(client, prefix=unique_prefix, ttl_s=5)
    calls = asyncio.Queue()

    async def on_change() -> None:
        await calls.put([w.worker_id for w in await registry.list()])

    task = asyncio.create_task(registry.watch(on_change, refresh_s=60))
    try:
        assert await asyncio.wait_for(calls.get(), 5) == []
        await asyncio.sleep(0.2)  # let the subscription settle
        await registry.register(_info("w9"), announce=True)
        # Woken by the announcement long before the 60 s refresh.
        seen = []
        while seen != ["w9"]:
            seen = await asyncio.wait_for(calls.get(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
