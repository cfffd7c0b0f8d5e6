"""Reading what services wrote to a topic, for tests (a group-less consumer from the start)."""

from __future__ import annotations

import time

from aiokafka.structs import ConsumerRecord

from shared.kafka_clients import make_consumer
from shared.settings import ClusterSettings

__all__ = ["read_topic"]


async def read_topic(settings: ClusterSettings, topic: str, count: int, timeout_s: float = 20.0) -> list[ConsumerRecord]:
    """The first `count` records of `topic` (fewer if the timeout passes first)."""
    consumer = make_consumer(settings, topic, client_id="test-reader", group_id=None)
    await consumer.start()
    try:
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records += batch
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()
