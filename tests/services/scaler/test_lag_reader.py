"""LagReader against the real broker (Tansu): committed offsets of the batcher group vs the ends of
the priority topics, through the consumer API."""

from __future__ import annotations

import uuid

from aiokafka import TopicPartition

from services.scaler.lag_reader import LagReader
from services.scaler.settings import ScalerSettings
from shared.kafka_clients import make_consumer, make_producer
from shared.records import Priority
from shared.topics import Topics


async def test_lag_per_priority_from_committed_and_end_offsets(scaler_settings: ScalerSettings) -> None:
    topics = Topics.from_settings(scaler_settings)
    group = f"batchers-{uuid.uuid4().hex[:8]}"
    high, normal = topics.requests(Priority.HIGH), topics.requests(Priority.NORMAL)
    producer = make_producer(scaler_settings, client_id="test-gateway")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(high, b"{}", key=f"h{i}", partition=0)
        for i in range(10):
            await producer.send_and_wait(normal, b"{}", key=f"n{i}", partition=i % 2)
    finally:
        await producer.stop()

    # The batchers have finished 3 requests of normal/0 and 1 of normal/1, none of high.
    batcher = make_consumer(scaler_settings, client_id="test-batcher", group_id=group)
    parts = [TopicPartition(normal, 0), TopicPartition(normal, 1)]
    batcher.assign(parts)
    await batcher.start()
    try:
        await batcher.commit({parts[0]: 3, parts[1]: 1})
    finally:
        await batcher.stop()

    reader = LagReader(scaler_settings, topics, group_id=group, client_id="test-scaler-lag")
    await reader.start()
    try:
        lag = await reader.read()
        assert lag.by_priority == {"high": 5.0, "normal": 6.0, "low": 0.0}
        assert lag.total == 11.0
        again = await reader.read()  # partitions cached, same answer
        assert again.by_priority == lag.by_priority
    finally:
        await reader.stop()


async def test_topics_that_do_not_exist_have_no_lag(scaler_settings: ScalerSettings) -> None:
    topics = Topics(prefix="nosuchprefix" + uuid.uuid4().hex[:6])
    reader = LagReader(scaler_settings, topics, group_id="nobody", client_id="test-scaler-lag")
    await reader.start()
    try:
        assert (await reader.read()).by_priority == {"high": 0.0, "normal": 0.0, "low": 0.0}
    finally:
        await reader.stop()
