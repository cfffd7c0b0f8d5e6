"""Reads MetricsSnapshots from the metrics topic into the FleetView.

Snapshots are state, not work: losing one only makes the view a few seconds older. Offsets are
still committed after each batch (the next scaler instance then starts near the head), and a record
that cannot be parsed goes to the dead-letter topic before the commit moves past it.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from services.scaler.fleet_view import FleetView
from services.scaler.metrics import ScalerMetrics
from shared.deadletter import publish_dead_letter
from shared.records import MetricsSnapshot
from shared.topics import Topics

__all__ = ["SnapshotConsumer"]

log = logging.getLogger(__name__)


class SnapshotConsumer:
    """The scaler's consume -> update view -> commit loop."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        view: FleetView,
        metrics: ScalerMetrics,
        topics: Topics,
        *,
        consumer_name: str,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._view = view
        self._metrics = metrics
        self._topics = topics
        self._consumer_name = consumer_name

    async def run(self) -> None:
        """Consume until cancelled."""
        while True:
            # A long poll on the broker, not a spin.
            batches = await self._consumer.getmany(timeout_ms=1_000)
            for tp, records in batches.items():
                for record in records:
                    try:
                        snapshot = MetricsSnapshot.from_bytes(record.value or b"")
                    except (ValidationError, ValueError) as exc:
                        # Safe: the bytes are kept on the dead-letter topic; the view just
                        # misses one snapshot.
                        await publish_dead_letter(
                            self._producer,
                            self._topics.deadletter,
                            record,
                            f"invalid MetricsSnapshot: {exc}",
                            consumer=self._consumer_name,
                        )
                        self._metrics.deadlettered.inc()
                        continue
                    self._metrics.snapshots.labels(snapshot.service).inc()
                    self._view.update(snapshot)
                try:
                    await self._consumer.commit({tp: records[-1].offset + 1})
                except (CommitFailedError, KafkaError):
                    # Safe: snapshots are state; re-reading a few after a rebalance only
                    # refreshes the view with values it already had.
                    log.warning("could not commit metrics offsets", exc_info=True)
