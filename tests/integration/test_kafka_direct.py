"""Upstream systems talk to the cluster straight over Kafka: a GenerationRequest produced to
`lgc.requests.normal` is answered on its `reply_to` topic; a record that does not parse goes to the
dead-letter topic and the cluster carries on."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aioredis

from shared.blocking_tenants import BlockingTenants
from shared.deadletter import dead_letter_from_headers
from shared.kafka_clients import make_consumer, make_producer
from shared.records import (
    ChatMessage,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    GuardMode,
    Priority,
    ReplyEvent,
    ReplyKind,
)
from shared.settings import ClusterSettings
from shared.topics import Topics, TopicSpec, ensure_topics
from tests.integration.conftest import MODEL


async def _next_for(consumer, request_id: str, parse, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        record = await asyncio.wait_for(consumer.getone(), max(0.1, deadline - time.monotonic()))
        value = parse(record.value)
        if getattr(value, "request_id", None) == request_id:
            return value


def _capital_question(reply_topic: str, *, tenant: str, guard: GuardMode = GuardMode.ASYNC) -> GenerationRequest:
    """A streaming request as an upstream system produces it, answered on `reply_topic`."""
    return GenerationRequest(
        id=f"up-{uuid.uuid4().hex}",
        model=MODEL,
        messages=(ChatMessage(role="user", content="What is the capital of France?"),),
        params=GenerationParams(max_new_tokens=12, temperature=0),
        stream=True,
        reply_to=reply_topic,
        deadline=time.time() + 120,
        tenant=tenant,
        guard=guard,
    )


async def test_request_produced_to_kafka_is_answered_on_reply_to(cluster) -> None:
    settings = ClusterSettings(kafka_bootstrap=cluster.endpoints.kafka_bootstrap, topic_prefix="lgc")
    topics = Topics.from_settings(settings)
    reply_topic = f"lgc.replies.upstream-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [TopicSpec(reply_topic, 1, 1)])
    replies = make_consumer(settings, reply_topic, client_id="upstream", group_id=None)
    results = make_consumer(settings, topics.results, client_id="upstream-results", group_id=None, auto_offset_reset="latest")
    producer = make_producer(settings, client_id="upstream")
    await replies.start()
    await results.start()
    await producer.start()
    try:
        request = _capital_question(reply_topic, tenant="upstream-system")
        await producer.send_and_wait(topics.requests(Priority.NORMAL), request.to_bytes(), key=request.id)
        events = []
        while not events or not events[-1].terminal:
            events.append(await _next_for(replies, request.id, ReplyEvent.from_bytes))
        assert events[-1].kind is ReplyKind.FINAL
        assert "Paris" in events[-1].text
        assert "".join(e.text for e in events[:-1]) == events[-1].text
        result = await _next_for(results, request.id, GenerationResult.from_bytes)
        assert result.text == events[-1].text and result.tenant == "upstream-system"
    finally:
        await producer.stop()
        await replies.stop()
        await results.stop()


async def test_log_probabilities_of_a_request_that_does_not_stream_come_on_deltas_before_the_final(cluster) -> None:
    settings = ClusterSettings(kafka_bootstrap=cluster.endpoints.kafka_bootstrap, topic_prefix="lgc")
    topics = Topics.from_settings(settings)
    reply_topic = f"lgc.replies.upstream-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [TopicSpec(reply_topic, 1, 1)])
    replies = make_consumer(settings, reply_topic, client_id="upstream", group_id=None)
    producer = make_producer(settings, client_id="upstream")
    await replies.start()
    await producer.start()
    try:
        request = _capital_question(reply_topic, tenant="upstream-system").model_copy(
            update={"stream": False, "params": GenerationParams(max_new_tokens=6, temperature=0, logprobs=True, top_logprobs=2)}
        )
        await producer.send_and_wait(topics.requests(Priority.NORMAL), request.to_bytes(), key=request.id)
        events = []
        while not events or not events[-1].terminal:
            events.append(await _next_for(replies, request.id, ReplyEvent.from_bytes))
        final, deltas = events[-1], events[:-1]
        assert final.kind is ReplyKind.FINAL and final.logprobs == ()
        # Not streamed: the deltas carry no text, only the log probabilities, one per token.
        assert deltas and all(d.kind is ReplyKind.DELTA and d.text == "" and d.logprobs for d in deltas)
        entries = [e for d in deltas for e in d.logprobs]
        assert final.usage is not None and len(entries) == final.usage.completion_tokens
        assert all(len(e.top) == 2 and e.top[0].token_id == e.token_id for e in entries)  # greedy
        if final.finish_reason == "length":
            assert "".join(e.token for e in entries) == final.text
    finally:
        await producer.stop()
        await replies.stop()


async def test_unparseable_request_record_is_dead_lettered(cluster) -> None:
    settings = ClusterSettings(kafka_bootstrap=cluster.endpoints.kafka_bootstrap, topic_prefix="lgc")
    topics = Topics.from_settings(settings)
    dlq = make_consumer(settings, topics.deadletter, client_id="dlq-reader", group_id=None, auto_offset_reset="earliest")
    producer = make_producer(settings, client_id="bad-producer")
    await dlq.start()
    await producer.start()
    marker = uuid.uuid4().hex.encode()
    try:
        await producer.send_and_wait(topics.requests(Priority.HIGH), b"not json " + marker, key="junk")
        deadline = time.monotonic() + 60
        while True:
            record = await asyncio.wait_for(dlq.getone(), max(0.1, deadline - time.monotonic()))
            if marker in (record.value or b""):
                break
        info = dead_letter_from_headers(record.headers)
        assert info.topic == topics.requests(Priority.HIGH)
        assert info.error
    finally:
        await producer.stop()
        await dlq.stop()


async def test_a_blocking_tenant_cannot_bypass_the_guardian_over_kafka(cluster) -> None:
    """A producer that writes straight to a request topic for a blocking-mode tenant, claiming
    `guard: async`, gets no token before the guardian's verdict: only one judged final event."""
    settings = ClusterSettings(kafka_bootstrap=cluster.endpoints.kafka_bootstrap, topic_prefix="lgc")
    topics = Topics.from_settings(settings)
    tenant = f"guarded-{uuid.uuid4().hex[:8]}"
    redis = aioredis.from_url(cluster.redis_url)
    try:
        # As a gateway with this tenant in its keys file announces it; the batcher re-reads the
        # list every LGC_BATCHER_BLOCKING_TENANTS_REFRESH_S (5 s), so wait past one refresh.
        await BlockingTenants(redis, prefix="lgc").announce({tenant})
    finally:
        await redis.aclose()
    await asyncio.sleep(6)
    reply_topic = f"lgc.replies.upstream-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [TopicSpec(reply_topic, 1, 1)])
    replies = make_consumer(settings, reply_topic, client_id="upstream", group_id=None)
    producer = make_producer(settings, client_id="upstream")
    await replies.start()
    await producer.start()
    try:
        request = _capital_question(reply_topic, tenant=tenant, guard=GuardMode.ASYNC)
        await producer.send_and_wait(topics.requests(Priority.NORMAL), request.to_bytes(), key=request.id)
        event = await _next_for(replies, request.id, ReplyEvent.from_bytes)
        # The first event is already terminal: no delta left before the guardian judged (allow).
        assert event.kind is ReplyKind.FINAL and "Paris" in event.text
    finally:
        await producer.stop()
        await replies.stop()
