"""Wires the guardian together: Kafka clients, the results consumer, the HTTP API and the metrics
snapshot publisher, with a start/serve/stop lifecycle."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from services.guardian.api import create_app
from services.guardian.evaluator import Evaluator
from services.guardian.http_server import HttpServer
from services.guardian.metrics import GuardianMetrics
from services.guardian.result_consumer import ResultConsumer
from services.guardian.settings import GuardianSettings
from shared.background_tasks import run_until_stopped
from shared.kafka_clients import make_consumer, make_producer
from shared.metrics import SnapshotPublisher
from shared.topics import Topics

__all__ = ["GuardianService"]

log = logging.getLogger(__name__)


class GuardianService:
    """One guardian instance."""

    def __init__(self, settings: GuardianSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.metrics = GuardianMetrics(registry)
        self.evaluator = Evaluator(min_score=settings.guardian_min_score)
        self._ready = False
        client_id = f"lgc-guardian-{settings.instance_id}"
        self._producer = make_producer(settings, client_id=client_id)
        consumer_settings = settings.model_copy(update={"kafka_fetch_max_wait_ms": settings.guardian_fetch_max_wait_ms})
        self._consumer = make_consumer(
            consumer_settings,
            self.topics.results,
            client_id=client_id,
            group_id=settings.consumer_group,
            max_poll_records=settings.guardian_max_batch,
        )
        self.app = create_app(
            self.evaluator, self.metrics, lambda: self._ready, inline_max_chars=settings.guardian_inline_max_chars
        )
        self._http = HttpServer(self.app, settings.guardian_host, settings.guardian_http_port)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        consumer = ResultConsumer(
            self._consumer,
            self._producer,
            self.evaluator,
            self.metrics,
            self.topics,
            consumer_name=f"guardian:{self.settings.instance_id}",
            max_batch=self.settings.guardian_max_batch,
            inline_max_chars=self.settings.guardian_inline_max_chars,
            retry_backoff_s=self.settings.guardian_retry_backoff_s,
        )
        publisher = SnapshotPublisher(
            self._producer,
            self.topics.metrics,
            lambda: self.metrics.snapshot(self.settings.instance_id),
            self.settings.metrics_interval_s,
        )
        self._tasks = [
            asyncio.create_task(consumer.run(), name="guardian-consumer"),
            asyncio.create_task(publisher.run(), name="guardian-snapshots"),
        ]
        await self._http.start()
        self._ready = True
        log.info(
            "guardian ready",
            extra={
                "http": f"{self.settings.guardian_host}:{self.settings.guardian_http_port}",
                "results_topic": self.topics.results,
                "group": self.settings.consumer_group,
            },
        )

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raises if a background task fails (the process then exits
        non-zero and its supervisor restarts it)."""
        watched = [*self._tasks, *([self._http.task] if self._http.task else [])]
        await run_until_stopped(stop, watched, name="guardian")

    async def stop(self) -> None:
        """Stop taking work, finish in-flight sends, leave the consumer group."""
        self._ready = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.stop()
        await self._consumer.stop()
        await self._producer.stop()
