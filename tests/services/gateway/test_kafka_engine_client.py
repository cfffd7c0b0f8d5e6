"""The Kafka engine client against the real broker and Redis: what a caller of `generate()` sees
when replies come back in order, twice, late, never, or when it stops listening."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.kafka_clients import make_consumer, make_producer
from shared.records import Cancel, FinishReason, GenerationRequest, Priority, ReplyEvent, ReplyKind
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics
from shared.worker_registry import WorkerRegistry

from services.gateway.errors import EngineUnavailableError, GatewayTimeoutError
from services.gateway.kafka_engine_client import KafkaEngineClient
from services.gateway.model_catalog import ModelCatalog
from services.gateway.reply_router import ReplyRouter

from tests.services.gateway.conftest import FAKE_MODEL


class Harness:
    """An engine client plus a consumer of what it writes to Kafka."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.cancel_reasons: list[str] = []

    async def start(self) -> None:
        settings = self.settings
        await ensure_topics(
            settings, [*self.topics.cluster_topics(settings), self.topics.reply_topic_spec("gw", settings)]
        )
        self.producer: AIOKafkaProducer = make_producer(settings, client_id="engine-test")
        await self.producer.start()
        self.router = ReplyRouter(settings, self.producer, topic=self.topics.replies("gw"), deadletter_topic=self.topics.deadletter)
        await self.router.start()
        self.redis = aioredis.from_url(settings.redis_url)
        catalog = ModelCatalog(WorkerRegistry(self.redis, prefix=settings.topic_prefix), refresh_s=1)
        self.engine = KafkaEngineClient(
            self.producer, self.router, catalog, self.topics, default_timeout_s=30, on_cancel=self.cancel_reasons.append
        )
        self.requests: AIOKafkaConsumer = make_consumer(
            settings, *self.topics.all_requests, client_id="engine-test-req", group_id=None
        )
        self.cancels: AIOKafkaConsumer = make_consumer(
            settings, self.topics.cancellations, client_id="engine-test-cancel", group_id=None
        )
        await self.requests.start()
        await self.cancels.start()

    async def stop(self) -> None:
        await self.engine.drain()
        await self.requests.stop()
        await self.cancels.stop()
        await self.router.stop()
        await self.producer.stop()
        await self.redis.aclose()

    async def next_request(self) -> tuple[str, GenerationRequest]:
        record = await asyncio.wait_for(self.requests.getone(), 10)
        return record.topic, GenerationRequest.from_bytes(record.value)

    async def next_cancel(self) -> Cancel:
        record = await asyncio.wait_for(self.cancels.getone(), 10)
        assert record.key is not None
        cancel = Cancel.from_bytes(record.value)
        assert record.key.decode() == cancel.request_id
        return cancel

    async def reply(self, *events: ReplyEvent) -> None:
        for event in events:
            await self.producer.send_and_wait(self.router.topic, event.to_bytes(), key=event.request_id)


@pytest.fixture
async def harness(cluster_settings: ClusterSettings) -> AsyncIterator[Harness]:
    harness = Harness(cluster_settings)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


def make_request(request_id: str, *, stream: bool = True, deadline_in: float = 30.0) -> GenerationRequest:
    return GenerationRequest(
        id=request_id,
        model=FAKE_MODEL,
        prompt="hello",
        stream=stream,
        priority=Priority.LOW,
        deadline=time.time() + deadline_in,
    )


def delta(request_id: str, seq: int, text: str) -> ReplyEvent:
    return ReplyEvent(request_id=request_id, kind=ReplyKind.DELTA, seq=seq, text=text)


def final(request_id: str, seq: int, text: str) -> ReplyEvent:
    return ReplyEvent(request_id=request_id, kind=ReplyKind.FINAL, seq=seq, text=text, finish_reason=FinishReason.STOP)


async def test_generate_produces_and_yields_until_the_end(harness: Harness) -> None:
    events = harness.engine.generate(make_request("r-1"))
    first = asyncio.ensure_future(anext(events))
    topic, sent = await harness.next_request()
    assert topic == harness.topics.requests(Priority.LOW)
    assert sent.id == "r-1" and sent.reply_to == harness.router.topic
    await harness.reply(delta("r-1", 0, "a"), delta("r-1", 0, "a"), delta("r-1", 1, "b"), final("r-1", 2, "ab"))
    seen = [await first] + [e async for e in events]
    assert [(e.kind, e.text) for e in seen] == [(ReplyKind.DELTA, "a"), (ReplyKind.DELTA, "b"), (ReplyKind.FINAL, "ab")]
    assert harness.router.waiting == 0  # unsubscribed at the end
    assert harness.cancel_reasons == []  # a finished request is not cancelled


async def test_timeout_cancels_and_raises(harness: Harness) -> None:
    events = harness.engine.generate(make_request("r-slow", deadline_in=0.4))
    started = time.monotonic()
    with pytest.raises(GatewayTimeoutError):
        await anext(events)
    assert 0.3 < time.monotonic() - started < 5
    cancel = await harness.next_cancel()
    assert (cancel.request_id, cancel.reason) == ("r-slow", "timeout")
    assert harness.router.waiting == 0


async def test_closing_early_cancels(harness: Harness) -> None:
    events = harness.engine.generate(make_request("r-close"))
    first = asyncio.ensure_future(anext(events))
    await harness.next_request()
    await harness.reply(delta("r-close", 0, "a"))
    assert (await first).text == "a"
    await events.aclose()  # the client went away between two events
    cancel = await harness.next_cancel()
    assert (cancel.request_id, cancel.reason) == ("r-close", "client_disconnected")
    # Replies that still come are stale now.
    await harness.reply(delta("r-close", 1, "b"))
    assert harness.router.waiting == 0


async def test_task_cancellation_cancels(harness: Harness) -> None:
    async def consume() -> None:
        async for _ in harness.engine.generate(make_request("r-task")):
            pass

    task = asyncio.create_task(consume())
    await harness.next_request()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    cancel = await harness.next_cancel()
    assert (cancel.request_id, cancel.reason) == ("r-task", "client_disconnected")
    assert harness.cancel_reasons == ["client_disconnected"]


async def test_unreachable_broker_is_engine_unavailable(cluster_settings: ClusterSettings, harness: Harness) -> None:
    await harness.producer.stop()  # a producer that cannot send any more
    with pytest.raises(EngineUnavailableError):
        await anext(harness.engine.generate(make_request("r-down")))
    harness.producer = make_producer(cluster_settings, client_id="engine-test-2")  # for the fixture's stop
    await harness.producer.start()


async def test_models_come_from_the_registry(harness: Harness, registered_worker) -> None:
    cards = await harness.engine.models(refresh=True)
    assert [c.name for c in cards] == [FAKE_MODEL] and cards[0].workers == 1 and cards[0].simulated
    assert await harness.engine.resolve_model(None) == FAKE_MODEL
    assert harness.engine.ready()
