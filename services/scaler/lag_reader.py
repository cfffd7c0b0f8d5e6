"""Consumer lag of the batchers' group on each priority request topic.

Computed with the consumer API (`committed()` of the batcher group against `end_offsets()`), which
works on Apache Kafka and on the embedded Tansu broker alike; aiokafka's admin
`list_consumer_group_offsets` cannot parse Tansu's answer (DESIGN.md §2).

The reader's consumer carries the batchers' `group_id` only to read their committed offsets: it
never subscribes, so it never joins the group and never takes partitions from a batcher. The
batchers commit only up to the lowest request whose final reply is out, so lag counts every
request not yet finished: those waiting in Kafka plus those in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.records import Priority
from shared.settings import ClusterSettings
from shared.topics import Topics

__all__ = ["ConsumerLag", "LagReader"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """Lag per priority (records), and in total."""

    by_priority: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.by_priority.values()))


class LagReader:
    """Reads the batcher group's lag; `start()` once, `read()` per decision, `stop()` at the end."""

    def __init__(self, settings: ClusterSettings, topics: Topics, *, group_id: str, client_id: str) -> None:
        self._topics = topics
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=client_id,
            group_id=group_id,
            enable_auto_commit=False,
            request_timeout_ms=max(settings.kafka_request_timeout_ms, 40_000),
        )
        self._partitions: dict[str, list[TopicPartition]] = {}

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def _partitions_of(self, topic: str) -> list[TopicPartition]:
        cached = self._partitions.get(topic)
        if cached:
            return cached
        # topics() refreshes the metadata; a topic not there yet has no lag.
        await self._consumer.topics()
        numbers = self._consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, p) for p in sorted(numbers)]
        if partitions:
            self._partitions[topic] = partitions
        return partitions

    async def read(self) -> ConsumerLag:
        """Lag now; raises KafkaError when the broker cannot answer (the caller decides without)."""
        by_priority: dict[str, float] = {}
        for priority in Priority:
            topic = self._topics.requests(priority)
            partitions = await self._partitions_of(topic)
            if not partitions:
                by_priority[priority.value] = 0.0
                continue
            ends = await self._consumer.end_offsets(partitions)
            uncommitted = []
            lag = 0
            for tp in partitions:
                committed = await self._consumer.committed(tp)
                if committed is None:
                    uncommitted.append(tp)
                else:
                    lag += max(0, ends[tp] - committed)
            if uncommitted:
                # No commit yet: the batchers start at the earliest offset, so all of it is lag.
                starts = await self._consumer.beginning_offsets(uncommitted)
                lag += sum(max(0, ends[tp] - starts[tp]) for tp in uncommitted)
            by_priority[priority.value] = float(lag)
        return ConsumerLag(by_priority)
