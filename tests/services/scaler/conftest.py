"""Fixtures for scaler tests against the real broker."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from aiokafka.structs import ConsumerRecord

from services.scaler.settings import ScalerSettings
from shared.kafka_clients import make_consumer
from shared.launcher.infra import find_free_port
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics
from tests.kafka_reading import read_topic  # noqa: F401 - re-exported for this folder's tests


@pytest.fixture
async def scaler_settings(cluster_settings: ClusterSettings) -> ScalerSettings:
    """ScalerSettings on the session broker with this test's topics, deciding every 0.2 s."""
    settings = ScalerSettings(
        **{
            **cluster_settings.model_dump(),
            "scaler_metrics_port": find_free_port(),
            "scaler_interval_s": 0.2,
            "scaler_max_replicas": 4,
            "metrics_interval_s": 0.5,
        }
    )
    await ensure_topics(settings, Topics.from_settings(settings).cluster_topics(settings))
    return settings


async def first_matching(
    settings: ClusterSettings, topic: str, predicate: Callable[[ConsumerRecord], bool], timeout_s: float = 20.0
) -> ConsumerRecord | None:
    """The first record of `topic` that satisfies `predicate`, waiting up to `timeout_s`."""
    consumer = make_consumer(settings, topic, client_id="test-reader", group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                for record in batch:
                    if predicate(record):
                        return record
        return None
    finally:
        await consumer.stop()
