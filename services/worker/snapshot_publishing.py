"""Publishes the worker's MetricsSnapshot to the metrics topic, surviving Kafka outages.

The worker must serve even when Kafka is unreachable (it is not on the serving path): the producer
is started in the background, with a growing pause between attempts, and a failed send is retried
on the next tick by SnapshotPublisher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from shared.kafka_clients import make_producer
from shared.metrics import SnapshotPublisher
from shared.records import MetricsSnapshot
from shared.settings import ClusterSettings
from shared.topics import Topics

__all__ = ["publish_snapshots"]

log = logging.getLogger(__name__)

_RETRY_MAX_S = 30.0
_STOP_TIMEOUT_S = 5.0


async def publish_snapshots(settings: ClusterSettings, take: Callable[[], MetricsSnapshot]) -> None:
    """Publish `take()` every `metrics_interval_s` until cancelled."""
    topic = Topics.from_settings(settings).metrics
    pause = 1.0
    while True:
        producer = make_producer(settings, client_id=f"lgc-worker-{settings.instance_id}")
        try:
            await producer.start()
        except Exception:
            # Safe: snapshots only feed the scaler; serving goes on, and the start is retried.
            log.warning(
                "Kafka is unreachable; metrics snapshots wait for it",
                extra={"bootstrap": settings.kafka_bootstrap, "retry_in_s": pause},
            )
            await _stop_quietly(producer)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX_S)
            continue
        pause = 1.0
        try:
            await SnapshotPublisher(producer, topic, take, settings.metrics_interval_s).run()
        finally:
            await _stop_quietly(producer)


async def _stop_quietly(producer: object) -> None:
    try:
        await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_S)  # type: ignore[attr-defined]
    except Exception:
        # Safe: the producer is being thrown away; its connections close with it.
        log.debug("producer stop failed", exc_info=True)
