"""Fixtures for guardian tests against the real broker: settings with private topics, and a reader
for what the guardian published."""

from __future__ import annotations

import asyncio

import pytest

from services.guardian.settings import GuardianSettings
from shared.launcher.infra import find_free_port
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics
from tests.kafka_reading import read_topic


@pytest.fixture
async def guardian_settings(cluster_settings: ClusterSettings) -> GuardianSettings:
    """GuardianSettings on the session broker, with this test's topics created."""
    settings = GuardianSettings(
        **{
            **cluster_settings.model_dump(),
            "guardian_http_port": find_free_port(),
            "guardian_retry_backoff_s": 0.1,
            "metrics_interval_s": 0.5,
        }
    )
    await ensure_topics(settings, Topics.from_settings(settings).cluster_topics(settings))
    return settings


async def no_more_records(settings: ClusterSettings, topic: str, seen: int, wait_s: float = 1.0) -> bool:
    """True if `topic` still holds only `seen` records after `wait_s`."""
    await asyncio.sleep(wait_s)
    return len(await read_topic(settings, topic, seen + 1, timeout_s=1.0)) == seen


@pytest.fixture
async def redis_client(redis_url: str):
    """A client on the session's real Redis."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
