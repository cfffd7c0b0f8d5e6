"""A batcher under test: a real BatcherService, real (simulated-backend) WorkerService instances
served over gRPC in this process, the real Tansu broker and Redis, and consumers on the reply,
results and dead-letter topics. Used by the batcher's test modules."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.batcher.service import BatcherService
from services.batcher.settings import BatcherSettings
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from shared.doorbell import DoorbellRinger, send_announced
from shared.kafka_clients import make_consumer, make_producer
from shared.launcher.infra import find_free_port
from shared.records import GenerationParams, GenerationRequest, GenerationResult, Priority, ReplyEvent
from shared.settings import ClusterSettings
from shared.topics import Topics, TopicSpec, ensure_topics

__all__ = ["Harness", "WorkerSpec", "start_harness"]


class WorkerSpec:
    """One simulated worker to start: its batch size (registered capacity) and speed."""

    def __init__(self, capacity: int = 8, tokens_per_s: float = 200, ttft_ms: float = 5) -> None:
        self.capacity = capacity
        self.tokens_per_s = tokens_per_s
        self.ttft_ms = ttft_ms


def worker_settings(base: ClusterSettings, instance: str, spec: WorkerSpec) -> WorkerSettings:
    return WorkerSettings(
        **base.model_dump(exclude={"instance_id"}),
        instance_id=instance,
        worker_backend="simulated",
        worker_grpc_port=find_free_port(),
        worker_metrics_port=find_free_port(),
        simulated_tokens_per_s=spec.tokens_per_s,
        simulated_ttft_ms=spec.ttft_ms,
        worker_max_batch_size=spec.capacity,
    )


class Harness:
    """Batcher + workers + a reply topic this test reads."""

    def __init__(self, settings, producer, replies, results, dlq, batcher, workers) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.producer = producer
        self.replies = replies
        self.results = results
        self.dlq = dlq
        self.batcher = batcher
        self.workers = workers
        self.reply_topic = f"{settings.topic_prefix}.replies.test"
        self.model = "simulated"
        #: Rings the batcher's doorbell as the gateway does (`send(..., ring=True)`).
        self.ringer = DoorbellRinger(batcher.redis, interval_s=settings.kafka_doorbell_ring_interval_ms / 1000)

    def request(self, **kw) -> GenerationRequest:
        base = dict(
            id=f"r-{uuid.uuid4().hex[:12]}",
            model=self.model,
            prompt="hello",
            params=GenerationParams(max_new_tokens=8),
            reply_to=self.reply_topic,
        )
        base.update(kw)
        return GenerationRequest(**base)

    async def send(self, request: GenerationRequest, priority: Priority = Priority.NORMAL, *, ring: bool = False) -> None:
        """Produce a request straight onto Kafka, as an upstream system does; `ring`: announce it
        on the doorbell too, as the gateway does."""
        ringer = self.ringer if ring else None
        await (await send_announced(self.producer, ringer, self.topics.requests(priority), request.to_bytes(), request.id))

    async def events_until_terminal(self, request_id: str, timeout: float = 30) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        deadline = time.monotonic() + timeout
        while True:
            record = await asyncio.wait_for(self.replies.getone(), max(0.1, deadline - time.monotonic()))
            event = ReplyEvent.from_bytes(record.value)
            if event.request_id != request_id:
                continue
            events.append(event)
            if event.terminal:
                return events

    async def terminals(self, request_ids: set[str], timeout: float = 30) -> dict[str, ReplyEvent]:
        """The terminal event of each of several requests (their events interleave)."""
        out: dict[str, ReplyEvent] = {}
        deadline = time.monotonic() + timeout
        while set(out) != request_ids:
            record = await asyncio.wait_for(self.replies.getone(), max(0.1, deadline - time.monotonic()))
            event = ReplyEvent.from_bytes(record.value)
            if event.request_id in request_ids and event.terminal:
                assert event.request_id not in out, "two terminal events for one request"
                out[event.request_id] = event
        return out

    async def result_for(self, request_id: str, timeout: float = 30) -> GenerationResult:
        deadline = time.monotonic() + timeout
        while True:
            record = await asyncio.wait_for(self.results.getone(), max(0.1, deadline - time.monotonic()))
            result = GenerationResult.from_bytes(record.value)
            if result.request_id == request_id:
                return result


@asynccontextmanager
async def start_harness(
    cluster_settings: ClusterSettings, workers: list[WorkerSpec] | None = None, **batcher: object
) -> AsyncIterator[Harness]:
    """Start workers (default: two of capacity 8 at 200 tokens/s) and a batcher (`batcher`
    overrides its settings); stop everything on exit."""
    fields = dict(
        instance_id="batcher-test",
        batcher_group_id=f"{cluster_settings.topic_prefix}-batcher",
        batcher_metrics_port=find_free_port(),
        batcher_no_worker_wait_s=2,
        metrics_interval_s=60,
    )
    fields.update(batcher)
    settings = BatcherSettings(**cluster_settings.model_dump(exclude=set(fields)), **fields)
    topics = Topics.from_settings(settings)
    reply_topic = f"{settings.topic_prefix}.replies.test"
    await ensure_topics(settings, topics.cluster_topics(settings) + [TopicSpec(reply_topic, 1, 1)])
    specs = workers if workers is not None else [WorkerSpec(), WorkerSpec()]
    services = [WorkerService(worker_settings(cluster_settings, f"sim-{i}", spec)) for i, spec in enumerate(specs)]
    for w in services:
        await w.start()
    producer = make_producer(settings, client_id="test")
    await producer.start()
    replies = make_consumer(settings, reply_topic, client_id="test-replies", group_id=None)
    results = make_consumer(settings, topics.results, client_id="test-results", group_id=None)
    dlq = make_consumer(settings, topics.deadletter, client_id="test-dlq", group_id=None)
    for c in (replies, results, dlq):
        await c.start()
    service = BatcherService(settings)
    await service.start()
    h = Harness(settings, producer, replies, results, dlq, service, services)
    try:
        yield h
    finally:
        await h.ringer.aclose()
        await service.stop()
        for c in (replies, results, dlq):
            await c.stop()
        await producer.stop()
        for w in services:
            await w.stop()
