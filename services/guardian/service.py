"""Wires the guardian together: the detectors (from `detector_catalog.build_detectors`) on their
thread pool, the verdict pipeline with its Redis cache and flagged-tenant set, the
results consumer (and the prompt consumer when prompt checks are on), the HTTP API and the metrics
snapshot publisher, with a start/serve/stop lifecycle."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from services.guardian.api import create_app
from services.guardian import detector_catalog
from services.guardian.evaluator import Evaluator
from services.guardian.findings import Detector
from services.guardian.http_server import HttpServer
from services.guardian.metrics import GuardianMetrics
from services.guardian.sampling import FlaggedTenants, LagSampler
from services.guardian.settings import GuardianSettings
from services.guardian.subjects import SubjectParser, prompt_subject, response_subject
from services.guardian.verdict_cache import VerdictCache
from services.guardian.verdict_consumer import VerdictConsumer
from services.guardian.verdict_pipeline import VerdictPipeline
from services.guardian.verdict_policy import ActionPolicy
from shared.background_tasks import run_until_stopped
from shared.blas_threads import cap_blas_threads
from shared.kafka_clients import AdaptiveFetchWait, make_consumer, make_producer
from shared.metrics import SnapshotPublisher
from shared.topics import Topics

__all__ = ["GuardianService", "build_detectors", "build_evaluator"]

log = logging.getLogger(__name__)

#: Longest a Redis call (verdict cache, flagged tenants) may take.
_REDIS_TIMEOUT_S = 2.0


def build_detectors(settings: GuardianSettings) -> list[Detector]:
    """Every detector the settings enable (see detector_catalog.py)."""
    return list(detector_catalog.build_detectors(settings))


def build_evaluator(settings: GuardianSettings, detectors: list[Detector] | None = None) -> Evaluator:
    """The evaluator with the settings' action policy."""
    policy = ActionPolicy(
        min_score=settings.guardian_min_score,
        block_threshold=settings.guardian_block_threshold,
        block_categories=frozenset(settings.guardian_block_categories),
        policy_action=settings.guardian_policy_action,
    )
    return Evaluator(
        detectors if detectors is not None else build_detectors(settings),
        policy=policy,
        expensive_slices=settings.guardian_expensive_slices,
    )


class GuardianService:
    """One guardian instance."""

    def __init__(
        self,
        settings: GuardianSettings,
        registry: CollectorRegistry | None = None,
        *,
        detectors: list[Detector] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.metrics = GuardianMetrics(registry)
        self.evaluator = build_evaluator(settings, detectors)
        self._ready = False
        self._client_id = f"lgc-guardian-{settings.instance_id}"
        self._producer = make_producer(settings, client_id=self._client_id)
        self._executor = ThreadPoolExecutor(settings.guardian_detector_threads, thread_name_prefix="guardian-detect")
        # Bounded waits: a Redis that hangs must cost a batch its cache (logged), not stall the
        # consumer; the cache and the flagged-tenant set treat a timeout like any Redis error.
        self._redis = aioredis.from_url(
            settings.redis_url, socket_timeout=_REDIS_TIMEOUT_S, socket_connect_timeout=_REDIS_TIMEOUT_S
        )
        self.pipeline = VerdictPipeline(
            self.evaluator,
            self.metrics,
            sampler=LagSampler(
                floor=settings.guardian_sample_floor,
                lag_low=settings.guardian_sample_lag_low,
                lag_high=settings.guardian_sample_lag_high,
            ),
            cache=(
                VerdictCache(
                    self._redis,
                    prefix=settings.topic_prefix,
                    ttl_s=settings.guardian_cache_ttl_s,
                    version=self.evaluator.version,
                )
                if settings.guardian_cache_enabled
                else None
            ),
            flagged=FlaggedTenants(self._redis, prefix=settings.topic_prefix, window_s=settings.guardian_flagged_window_s),
            executor=self._executor,
        )
        self._consumers: list[tuple[AIOKafkaConsumer, SubjectParser, str]] = [
            (self._consumer(settings.consumer_group, self.topics.results), response_subject, "results")
        ]
        if settings.guardian_prompt_checks:
            self._consumers.append(
                (self._consumer(settings.prompt_consumer_group, *self.topics.all_requests), prompt_subject, "requests")
            )
        self.app = create_app(self.pipeline, self.metrics, lambda: self._ready)
        self._http = HttpServer(self.app, settings.guardian_host, settings.guardian_http_port)
        self._tasks: list[asyncio.Task[None]] = []

    def _consumer(self, group: str, *topics: str) -> AIOKafkaConsumer:
        settings = self.settings
        consumer_settings = settings.model_copy(update={"kafka_fetch_max_wait_ms": settings.guardian_fetch_max_wait_ms})
        return make_consumer(
            consumer_settings,
            *topics,
            client_id=self._client_id,
            group_id=group,
            max_poll_records=settings.guardian_max_batch,
        )

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        # Model-based detectors load their models now, on the detector pool (seconds of CPU),
        # so that the first batch does not wait for them and readiness means "can judge".
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_detectors)
        # After the models loaded: the cap reaches the BLAS libraries loaded by then (numpy's,
        # spaCy's). From this thread, not the pool's: once any thread has set OpenBLAS's count,
        # threadpoolctl's call from another thread no longer changes it (OpenBLAS 0.3.31).
        cap_blas_threads(self.settings.guardian_blas_threads)
        await self._producer.start()
        loops = []
        for consumer, parse, source in self._consumers:
            await consumer.start()
            loops.append(
                VerdictConsumer(
                    consumer,
                    self._producer,
                    self.pipeline,
                    self.metrics,
                    self.topics,
                    parse=parse,
                    source=source,
                    consumer_name=f"guardian:{self.settings.instance_id}",
                    max_batch=self.settings.guardian_max_batch,
                    retry_backoff_s=self.settings.guardian_retry_backoff_s,
                    fetch_wait=AdaptiveFetchWait.off_serving_path(
                        consumer, self.settings, busy_ms=self.settings.guardian_fetch_max_wait_ms
                    ),
                )
            )
        publisher = SnapshotPublisher(
            self._producer,
            self.topics.metrics,
            lambda: self.metrics.snapshot(self.settings.instance_id),
            self.settings.metrics_interval_s,
        )
        self._tasks = [asyncio.create_task(loop.run(), name=f"guardian-consumer-{loop.source}") for loop in loops]
        self._tasks.append(asyncio.create_task(publisher.run(), name="guardian-snapshots"))
        await self._http.start()
        self._ready = True
        log.info(
            "guardian ready",
            extra={
                "http": f"{self.settings.guardian_host}:{self.settings.guardian_http_port}",
                "results_topic": self.topics.results,
                "group": self.settings.consumer_group,
                "prompt_checks": self.settings.guardian_prompt_checks,
                "detectors": [r.detector_id for r in self.evaluator.runners],
                "expensive": [r.detector_id for r in self.evaluator.expensive],
            },
        )

    def _load_detectors(self) -> None:
        for detector in self.evaluator.detectors:
            load = getattr(detector, "load", None)
            if callable(load):
                load()

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
        for consumer, _, _ in self._consumers:
            await consumer.stop()
        await self._producer.stop()
        await self._redis.aclose()
        # Detector calls in flight finish on their threads; nothing waits for them any more.
        self._executor.shutdown(wait=False, cancel_futures=True)
