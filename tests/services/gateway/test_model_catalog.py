"""Served models from the real worker registry in Redis, with the cache and model resolution."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from shared.launcher.infra import find_free_port, start_redis
from shared.settings import ClusterSettings
from shared.worker_registry import WorkerInfo, WorkerRegistry

from services.gateway.errors import EngineUnavailableError, ModelNotFoundError, NoWorkersError
from services.gateway.model_catalog import ModelCatalog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def registry(cluster_settings: ClusterSettings) -> AsyncIterator[WorkerRegistry]:
    redis = aioredis.from_url(cluster_settings.redis_url)
    try:
        yield WorkerRegistry(redis, prefix=cluster_settings.topic_prefix, ttl_s=60)
    finally:
        await redis.aclose()


def worker(worker_id: str, model: str, **extra: object) -> WorkerInfo:
    fields: dict[str, object] = {"address": "127.0.0.1:1", "backend": "transformers", "capacity": 4, **extra}
    return WorkerInfo(worker_id=worker_id, model=model, **fields)


async def test_distinct_models_sorted_without_draining_workers(registry: WorkerRegistry) -> None:
    for info in (
        worker("w1", "zeta"),
        worker("w2", "alpha"),
        worker("w3", "alpha"),
        worker("w4", "gone", draining=True),
        worker("w5", "sim", simulated=True, backend="simulated"),
    ):
        await registry.register(info)
    cards = await ModelCatalog(registry, refresh_s=10).models()
    assert [(c.name, c.workers, c.simulated) for c in cards] == [("alpha", 2, False), ("sim", 1, True), ("zeta", 1, False)]


async def test_cache_and_refresh(registry: WorkerRegistry) -> None:
    clock = Clock()
    catalog = ModelCatalog(registry, refresh_s=2, clock=clock)
    assert await catalog.models() == []
    await registry.register(worker("w1", "m1"))
    assert await catalog.models() == []  # cached
    clock.now += 2.5
    (card,) = await catalog.models()
    assert card.name == "m1"
    assert (await catalog.models(max_age_s=0))[0].first_seen == card.first_seen  # first sight is kept


async def test_resolve(registry: WorkerRegistry) -> None:
    clock = Clock()
    catalog = ModelCatalog(registry, refresh_s=60, clock=clock)
    with pytest.raises(NoWorkersError):
        await catalog.resolve(None)
    with pytest.raises(NoWorkersError):
        await catalog.resolve("m1")
    await registry.register(worker("w1", "m1"))
    await registry.register(worker("w2", "m0"))
    clock.now += 1  # the cached empty list is re-read on a miss (after the minimal interval)
    assert await catalog.resolve("m1") == "m1"
    assert await catalog.resolve(None) == "m0"  # the first served model
    assert await catalog.resolve("") == "m0"
    with pytest.raises(ModelNotFoundError) as missing:
        await catalog.resolve("other")
    assert missing.value.param == "model" and "m0, m1" in missing.value.message


async def test_without_required_workers_any_named_model_is_accepted(registry: WorkerRegistry) -> None:
    catalog = ModelCatalog(registry, refresh_s=60, require_workers=False)
    assert await catalog.resolve("future-model") == "future-model"
    with pytest.raises(NoWorkersError):
        await catalog.resolve(None)  # nothing to choose from


async def test_unreachable_registry() -> None:
    redis = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        catalog = ModelCatalog(WorkerRegistry(redis), refresh_s=60)
        with pytest.raises(EngineUnavailableError):
            await catalog.models()
    finally:
        await redis.aclose()


async def test_last_list_is_used_when_registry_fails() -> None:
    # A Redis of its own, so that this test can stop it.
    server = start_redis("127.0.0.1", find_free_port())
    redis = aioredis.from_url(server.address, socket_connect_timeout=0.5)
    try:
        clock = Clock()
        registry = WorkerRegistry(redis)
        await registry.register(worker("w1", "m1"))
        catalog = ModelCatalog(registry, refresh_s=1, clock=clock)
        assert [c.name for c in await catalog.models()] == ["m1"]
        server.stop(grace_s=3)
        clock.now += 5
        assert [c.name for c in await catalog.models()] == ["m1"]
    finally:
        await redis.aclose()
        server.stop(grace_s=3)
