"""Prometheus helpers shared by every service, and the periodic MetricsSnapshot publisher.

Naming scheme: every metric is ``lgc_<service>_<what>_<unit>`` (``lgc_gateway_requests_total``,
``lgc_worker_ttft_seconds``). Each service keeps its metrics in one class built on a
``CollectorRegistry`` it is given, so tests can build as many services in one process as they like.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.records import MetricsSnapshot

__all__ = [
    "LATENCY_BUCKETS",
    "TOKEN_LATENCY_BUCKETS",
    "MetricsFactory",
    "SnapshotPublisher",
]

log = logging.getLogger(__name__)

#: Seconds, for end-to-end and queue latencies: 1 ms to 2 min.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Seconds, for time to first token and inter-token latency.
TOKEN_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5, 5, 10)


class MetricsFactory:
    """Makes metrics named ``lgc_<service>_<name>`` on one registry."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry

    def _name(self, name: str) -> str:
        return f"lgc_{self.service}_{name}"

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self._name(name), doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self._name(name), doc, list(labels), registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(self._name(name), doc, list(labels), registry=self.registry, buckets=tuple(buckets))


class SnapshotPublisher:
    """Publishes a MetricsSnapshot to the metrics topic every `interval_s` (for the scaler).

    It sleeps between snapshots (no polling). A failed send is logged and retried on the next tick:
    a missing snapshot only makes the scaler's view a few seconds older.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        take: Callable[[], MetricsSnapshot],
        interval_s: float,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._take = take
        self._interval_s = interval_s

    async def publish_once(self) -> MetricsSnapshot:
        snapshot = self._take()
        await self._producer.send_and_wait(self._topic, snapshot.to_bytes(), key=snapshot.instance)
        return snapshot

    async def run(self) -> None:
        while True:
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Safe: the next tick sends a fresh snapshot; nothing accumulates meanwhile.
                log.warning("could not publish a metrics snapshot", exc_info=True)
            await asyncio.sleep(self._interval_s)
