"""The reply router against the real Tansu broker: routing, duplicates, stale events, dead letters,
and starting at the end of the topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from shared.deadletter import dead_letter_from_headers
from shared.kafka_clients import make_consumer, make_producer
from shared.records import ErrorCode, ErrorInfo, FinishReason, ReplyEvent, ReplyKind
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics

from services.gateway.reply_router import ReplyRouter, ReplySubscription


def delta(request_id: str, seq: int, text: str = "x") -> ReplyEvent:
    return ReplyEvent(request_id=request_id, kind=ReplyKind.DELTA, seq=seq, text=text)


def final(request_id: str, seq: int, text: str = "done") -> ReplyEvent:
    return ReplyEvent(request_id=request_id, kind=ReplyKind.FINAL, seq=seq, text=text, finish_reason=FinishReason.STOP)


@pytest.fixture
async def producer(cluster_settings: ClusterSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(cluster_settings, client_id="test-producer")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
async def reply_topic(cluster_settings: ClusterSettings) -> str:
    topics = Topics.from_settings(cluster_settings)
    await ensure_topics(
        cluster_settings,
        [topics.reply_topic_spec("gw-test", cluster_settings), *topics.cluster_topics(cluster_settings)],
    )
    return topics.replies("gw-test")


@pytest.fixture
async def router(cluster_settings: ClusterSettings, producer: AIOKafkaProducer, reply_topic: str) -> AsyncIterator[ReplyRouter]:
    outcomes: list[str] = []
    router = ReplyRouter(
        cluster_settings,
        producer,
        topic=reply_topic,
        deadletter_topic=Topics.from_settings(cluster_settings).deadletter,
        on_outcome=outcomes.append,
    )
    router.outcomes = outcomes  # type: ignore[attr-defined]
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


async def next_events(subscription: ReplySubscription, n: int) -> list[ReplyEvent]:
    async with asyncio.timeout(10):
        return [await subscription.next_event() for _ in range(n)]


async def send(producer: AIOKafkaProducer, topic: str, *events: ReplyEvent) -> None:
    for event in events:
        await producer.send_and_wait(topic, event.to_bytes(), key=event.request_id)


async def test_routes_events_to_their_request(router: ReplyRouter, producer: AIOKafkaProducer, reply_topic: str) -> None:
    a, b = router.subscribe("req-a"), router.subscribe("req-b")
    await send(producer, reply_topic, delta("req-a", 0, "A0"), delta("req-b", 0, "B0"), final("req-b", 1), final("req-a", 1))
    assert [e.text for e in await next_events(a, 2)] == ["A0", "done"]
    assert [(e.kind, e.seq) for e in await next_events(b, 2)] == [(ReplyKind.DELTA, 0), (ReplyKind.FINAL, 1)]
    assert a.finished and b.finished
    assert router.ready() and router.waiting == 2


async def test_duplicates_and_events_after_the_end_are_dropped(
    router: ReplyRouter, producer: AIOKafkaProducer, reply_topic: str
) -> None:
    sub = router.subscribe("req-dup")
    error = ReplyEvent(
        request_id="req-dup", kind=ReplyKind.ERROR, seq=5, error=ErrorInfo(code=ErrorCode.INTERNAL, message="late")
    )
    await send(
        producer,
        reply_topic,
        delta("req-dup", 0, "a"),
        delta("req-dup", 0, "a"),  # duplicate
        delta("req-dup", 1, "b"),
        delta("req-dup", 0, "a"),  # a retried batcher starting over
        final("req-dup", 2, "ab"),
        final("req-dup", 2, "ab"),  # duplicate terminal
        error,  # after the terminal event
        delta("req-dup", 3, "c"),  # after the terminal event
    )
    # A sentinel on another request proves the router has read everything before it.
    sentinel = router.subscribe("req-sentinel")
    await send(producer, reply_topic, final("req-sentinel", 0))
    await next_events(sentinel, 1)
    events = await next_events(sub, 3)
    assert [(e.kind, e.seq, e.text) for e in events] == [
        (ReplyKind.DELTA, 0, "a"),
        (ReplyKind.DELTA, 1, "b"),
        (ReplyKind.FINAL, 2, "ab"),
    ]
    assert sub._queue.empty()
    assert router.stats.duplicates == 5
    assert router.outcomes.count("duplicate") == 5  # type: ignore[attr-defined]


async def test_terminal_event_is_taken_even_with_a_repeated_seq(
    router: ReplyRouter, producer: AIOKafkaProducer, reply_topic: str
) -> None:
    sub = router.subscribe("req-retry")
    error = ReplyEvent(
        request_id="req-retry", kind=ReplyKind.ERROR, seq=0, error=ErrorInfo(code=ErrorCode.WORKER_FAILED, message="x")
    )
    await send(producer, reply_topic, delta("req-retry", 0), delta("req-retry", 1), error)
    events = await next_events(sub, 3)
    assert events[-1].kind is ReplyKind.ERROR  # never lost, so the request always ends


async def test_stale_events_are_dropped(router: ReplyRouter, producer: AIOKafkaProducer, reply_topic: str) -> None:
    gone = router.subscribe("req-gone")
    router.unsubscribe("req-gone")
    sentinel = router.subscribe("req-sentinel")
    await send(producer, reply_topic, final("req-gone", 0), delta("req-never-made", 0), final("req-sentinel", 0))
    await next_events(sentinel, 1)
    assert gone._queue.empty()
    assert router.stats.stale == 2 and router.stats.delivered == 1


async def test_malformed_records_are_dead_lettered(
    cluster_settings: ClusterSettings, router: ReplyRouter, producer: AIOKafkaProducer, reply_topic: str
) -> None:
    deadletter = Topics.from_settings(cluster_settings).deadletter
    consumer = make_consumer(cluster_settings, deadletter, client_id="dlq-reader", group_id=None)
    await consumer.start()
    try:
        sub = router.subscribe("req-ok")
        await producer.send_and_wait(reply_topic, b"\xff not json", key="req-bad")
        await producer.send_and_wait(reply_topic, b'{"v": 99, "request_id": "x", "kind": "delta", "seq": 0}', key="x")
        await producer.send_and_wait(reply_topic, b'{"request_id": "req-ok", "kind": "error", "seq": 0}', key="req-ok")
        await send(producer, reply_topic, final("req-ok", 0))
        (event,) = await next_events(sub, 1)
        assert event.kind is ReplyKind.FINAL  # the router went on past the bad records
        async with asyncio.timeout(10):
            records = []
            while len(records) < 3:
                batch = await consumer.getmany(timeout_ms=1_000)
                records += [r for rs in batch.values() for r in rs]
        assert records[0].value == b"\xff not json" and records[0].key == b"req-bad"
        info = dead_letter_from_headers(records[0].headers)
        assert info.topic == reply_topic and info.consumer.startswith("gateway-replies-")
        assert "needs 'error'" in dead_letter_from_headers(records[2].headers).error
        assert router.stats.dead_lettered == 3
    finally:
        await consumer.stop()


async def test_starts_at_the_end_of_the_topic(
    cluster_settings: ClusterSettings, producer: AIOKafkaProducer, reply_topic: str
) -> None:
    await send(producer, reply_topic, final("req-old", 0, "old"))
    router = ReplyRouter(
        cluster_settings, producer, topic=reply_topic, deadletter_topic=Topics.from_settings(cluster_settings).deadletter
    )
    await router.start()
    try:
        sub = router.subscribe("req-old")
        # Produced right after start() returned: must be seen (nothing between is missed).
        await send(producer, reply_topic, final("req-old", 0, "new"))
        (event,) = await next_events(sub, 1)
        assert event.text == "new"
    finally:
        await router.stop()
    assert not router.ready()


async def test_subscribing_twice_is_refused(router: ReplyRouter) -> None:
    router.subscribe("req-twice")
    with pytest.raises(ValueError):
        router.subscribe("req-twice")


async def test_missing_topic_fails_start(cluster_settings: ClusterSettings, producer: AIOKafkaProducer) -> None:
    router = ReplyRouter(cluster_settings, producer, topic="does-not-exist-anywhere", deadletter_topic="x")
    with pytest.raises(RuntimeError, match="does not exist"):
        await router.start()


async def test_idle_router_pauses_fetching_and_loses_nothing(
    router: ReplyRouter, producer: AIOKafkaProducer, reply_topic: str
) -> None:
    assert router.paused  # nobody waits: no fetches
    await send(producer, reply_topic, final("req-late", 0))  # a late reply while paused
    sub = router.subscribe("req-next")
    assert not router.paused
    await send(producer, reply_topic, delta("req-next", 0, "a"), final("req-next", 1))
    assert [e.seq for e in await next_events(sub, 2)] == [0, 1]
    assert router.stats.stale == 1  # the late reply was read on resume and dropped
    router.unsubscribe("req-next")
    assert router.paused


async def test_with_the_doorbell_a_waiting_router_stays_paused_until_a_ring(
    cluster_settings: ClusterSettings, producer: AIOKafkaProducer, reply_topic: str
) -> None:
    """`LGC_KAFKA_DOORBELL`: while requests wait but nothing is announced the reply partition is
    paused (no fetch in flight); a ring resumes it and the reply arrives; read to the end of what
    was announced, it is paused again. A reply nobody rang for still arrives (safety fetch)."""
    import redis.asyncio as aioredis

    from shared.doorbell import DoorbellRinger

    settings = cluster_settings.model_copy(update={"kafka_doorbell": True})
    redis = aioredis.from_url(settings.redis_url)
    router = ReplyRouter(
        settings, producer, topic=reply_topic, deadletter_topic=Topics.from_settings(settings).deadletter, redis=redis
    )
    ringer = DoorbellRinger(redis, interval_s=0.001)
    await router.start()
    try:
        subscription = router.subscribe("req-rung")
        async with asyncio.timeout(5):
            while not router.paused:  # after the first (safety) fetch: parked
                await asyncio.sleep(0.005)
        sent = await producer.send(reply_topic, final("req-rung", 0).to_bytes(), key="req-rung")
        ringer.announce_when_acknowledged(sent)
        await sent
        assert [e.text for e in await next_events(subscription, 1)] == ["done"]
        assert router.doorbell is not None and router.doorbell.rings >= 1
        async with asyncio.timeout(5):
            while not router.paused:
                await asyncio.sleep(0.005)

        quiet = router.subscribe("req-quiet")
        await send(producer, reply_topic, final("req-quiet", 0, "unannounced"))
        assert [e.text for e in await next_events(quiet, 1)] == ["unannounced"]
    finally:
        await ringer.aclose()
        await router.stop()
        await redis.aclose()
