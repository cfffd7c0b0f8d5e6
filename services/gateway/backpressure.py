"""Backpressure from the request topics: when the batchers fall too far behind, refuse new work.

The lag is the sum over the request topics' partitions of end offset minus the batcher group's
committed offset (a partition the group never committed counts from its beginning offset), read
with an aiokafka consumer's `end_offsets()` / `beginning_offsets()` / `committed()` — the admin
client's `list_consumer_group_offsets` cannot parse Tansu's answer. One measurement is reused for
`gateway_lag_check_interval_s`, and concurrent requests share one measurement in progress, so the
broker sees at most about one lag query per second per gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.gateway.errors import TooManyRequestsError
from services.gateway.settings import GatewaySettings

__all__ = ["RequestLagMonitor"]

log = logging.getLogger(__name__)


class RequestLagMonitor:
    """Measures the batchers' lag on the request topics and refuses requests above a bound."""

    def __init__(
        self, settings: GatewaySettings, topics: tuple[str, ...], *, on_measure: Callable[[int], None] | None = None
    ) -> None:
        self._settings = settings
        self._on_measure = on_measure or (lambda _lag: None)
        self._topics = topics
        self._bound = settings.gateway_max_request_lag
        self._interval = settings.gateway_lag_check_interval_s
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._measured_at = float("-inf")
        self._lag = 0
        self._lock = asyncio.Lock()
        self.last_lag: int | None = None
        """The most recent measurement (None before the first)."""

    @property
    def enabled(self) -> bool:
        return self._bound > 0

    async def start(self) -> None:
        if not self.enabled:
            return
        s = self._settings
        # Never joins the group (no subscribe/assign): it only reads the group's committed offsets.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"gateway-lag-{s.instance_id}",
            group_id=s.gateway_batcher_group_id,
            enable_auto_commit=False,
            request_timeout_ms=max(s.kafka_request_timeout_ms, 40_000),
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def check(self) -> None:
        """Raise TooManyRequestsError (429 + Retry-After) when the lag is above the bound."""
        if not self.enabled:
            return
        lag = await self.lag()
        if lag is not None and lag > self._bound:
            raise TooManyRequestsError(
                f"The cluster is behind: {lag} requests are waiting (bound {self._bound}); retry shortly.",
                code="overloaded",
            )

    async def lag(self) -> int | None:
        """The request-topic lag, at most `interval` old (None when it cannot be measured)."""
        if time.monotonic() - self._measured_at < self._interval:
            return self.last_lag
        async with self._lock:
            if time.monotonic() - self._measured_at < self._interval:
                return self.last_lag
            try:
                self.last_lag = await self._measure()
                self._on_measure(self.last_lag)
            except Exception:
                # Safe: a failed measurement must not refuse traffic; the in-flight bound still holds.
                log.warning("could not measure the request-topic lag", exc_info=True)
                self.last_lag = None
            self._measured_at = time.monotonic()
            return self.last_lag

    async def _measure(self) -> int:
        consumer = self._consumer
        assert consumer is not None
        if not self._partitions:
            parts: list[TopicPartition] = []
            for topic in self._topics:
                for p in consumer.partitions_for_topic(topic) or await _partitions(consumer, topic):
                    parts.append(TopicPartition(topic, p))
            self._partitions = parts
        ends = await consumer.end_offsets(self._partitions)
        begins = await consumer.beginning_offsets(self._partitions)
        total = 0
        for tp in self._partitions:
            committed = await consumer.committed(tp)
            start = committed if committed is not None and committed >= 0 else begins.get(tp, 0)
            total += max(0, ends.get(tp, 0) - start)
        return total


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """Partitions of a topic, asking the broker for fresh metadata."""
    await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
    return consumer.partitions_for_topic(topic) or set()
