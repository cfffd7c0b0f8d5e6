"""Snapshots reach the real Kafka metrics topic; an unreachable Kafka is retried, never fatal."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.worker.snapshot_publishing import publish_snapshots
from shared.kafka_clients import make_consumer
from shared.records import MetricsSnapshot
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics


async def test_publishes_to_the_metrics_topic(cluster_settings: ClusterSettings) -> None:
    topics = Topics.from_settings(cluster_settings)
    await ensure_topics(cluster_settings, topics.cluster_topics(cluster_settings))
    settings = cluster_settings.model_copy(update={"metrics_interval_s": 0.2})
    consumer = make_consumer(settings, topics.metrics, client_id="t", group_id=None)
    await consumer.start()
    task = asyncio.create_task(
        publish_snapshots(settings, lambda: MetricsSnapshot(service="worker", instance="w-snap", values={"running": 1}))
    )
    try:
        seen: list[MetricsSnapshot] = []
        async with asyncio.timeout(60):  # generous: a loaded machine slows the broker a lot
            while len(seen) < 2:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    seen += [MetricsSnapshot.from_bytes(r.value) for r in records]
        assert all(s.instance == "w-snap" and s.values == {"running": 1.0} for s in seen)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


async def test_unreachable_kafka_keeps_retrying(cluster_settings: ClusterSettings, caplog: pytest.LogCaptureFixture) -> None:
    settings = cluster_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    calls = 0

    def take() -> MetricsSnapshot:
        nonlocal calls
        calls += 1
        return MetricsSnapshot(service="worker", instance="w")

    task = asyncio.create_task(publish_snapshots(settings, take))
    await asyncio.sleep(1.5)
    assert not task.done()  # still trying, not crashed
    assert calls == 0
    assert "Kafka is unreachable" in caplog.text
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
