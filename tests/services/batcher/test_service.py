"""The batcher against a real Tansu broker, a real Redis registry and real (simulated-backend)
workers served over gRPC in this process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from services.batcher.service import BatcherService
from services.batcher.settings import BatcherSettings
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from shared.deadletter import dead_letter_from_headers
from shared.kafka_clients import make_consumer, make_producer
from shared.launcher.infra import find_free_port
from shared.records import (
    Cancel,
    ErrorCode,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    Priority,
    ReplyEvent,
    ReplyKind,
)
from shared.topics import Topics, TopicSpec, ensure_topics


def _worker_settings(base, instance: str, tokens_per_s: float) -> WorkerSettings:
    return WorkerSettings(
        **base.model_dump(exclude={"instance_id"}),
        instance_id=instance,
        worker_backend="simulated",
        worker_grpc_port=find_free_port(),
        worker_metrics_port=find_free_port(),
        simulated_tokens_per_s=tokens_per_s,
        simulated_ttft_ms=5,
        worker_max_batch_size=8,
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

    async def send(self, request: GenerationRequest, priority: Priority = Priority.NORMAL) -> None:
        await self.producer.send_and_wait(self.topics.requests(priority), request.to_bytes(), key=request.id)

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


@pytest.fixture
async def harness(cluster_settings) -> AsyncIterator[Harness]:
    settings = BatcherSettings(
        **cluster_settings.model_dump(exclude={"instance_id", "metrics_interval_s"}),
        instance_id="batcher-test",
        batcher_group_id=f"{cluster_settings.topic_prefix}-batcher",
        batcher_metrics_port=find_free_port(),
        batcher_no_worker_wait_s=2,
        metrics_interval_s=60,
    )
    topics = Topics.from_settings(settings)
    reply_topic = f"{settings.topic_prefix}.replies.test"
    await ensure_topics(settings, topics.cluster_topics(settings) + [TopicSpec(reply_topic, 1, 1)])
    workers = [
        WorkerService(_worker_settings(cluster_settings, f"sim-{i}", tokens_per_s=200)) for i in range(2)
    ]
    for w in workers:
        await w.start()
    producer = make_producer(settings, client_id="test")
    await producer.start()
    replies = make_consumer(settings, reply_topic, client_id="test-replies", group_id=None)
    results = make_consumer(settings, topics.results, client_id="test-results", group_id=None)
    dlq = make_consumer(settings, topics.deadletter, client_id="test-dlq", group_id=None)
    for c in (replies, results, dlq):
        await c.start()
    batcher = BatcherService(settings)
    await batcher.start()
    h = Harness(settings, producer, replies, results, dlq, batcher, workers)
    try:
        yield h
    finally:
        await batcher.stop()
        for c in (replies, results, dlq):
            await c.stop()
        await producer.stop()
        for w in workers:
            await w.stop()


async def test_streams_deltas_then_one_final_and_a_result(harness: Harness) -> None:
    request = harness.request(stream=True)
    await harness.send(request)
    events = await harness.events_until_terminal(request.id)
    assert [e.seq for e in events] == list(range(len(events)))
    deltas, final = events[:-1], events[-1]
    assert deltas and all(e.kind is ReplyKind.DELTA for e in deltas)
    assert final.kind is ReplyKind.FINAL and final.finish_reason is FinishReason.LENGTH
    assert final.text == "".join(e.text for e in deltas)
    assert final.usage.completion_tokens == 8
    result = await harness.result_for(request.id)
    assert result.text == final.text and result.priority is Priority.NORMAL
    assert result.timings.total_ms is not None and result.worker_id in {"sim-0", "sim-1"}


async def test_non_streaming_gets_only_the_final_event(harness: Harness) -> None:
    request = harness.request(stream=False)
    await harness.send(request, Priority.HIGH)
    events = await harness.events_until_terminal(request.id)
    assert len(events) == 1 and events[0].kind is ReplyKind.FINAL and events[0].seq == 0


async def test_offsets_are_committed_after_the_final_reply(harness: Harness) -> None:
    requests = [harness.request() for _ in range(5)]
    for r in requests:
        await harness.send(r, Priority.LOW)
    finals = await harness.terminals({r.id for r in requests})
    assert all(e.kind is ReplyKind.FINAL for e in finals.values())
    low = harness.topics.requests(Priority.LOW)
    partitions = [TopicPartition(low, p) for p in range(harness.settings.request_topic_partitions)]
    consumer = harness.batcher.consumer
    deadline = time.monotonic() + 10
    while True:  # commits are batched; wait for the committer to catch up
        committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
        ends = await consumer.end_offsets(partitions)
        if all(committed[tp] == ends[tp] for tp in partitions) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert committed == ends
    assert sum(ends.values()) == 5


async def test_malformed_record_is_dead_lettered_and_the_next_is_served(harness: Harness) -> None:
    topic = harness.topics.requests(Priority.NORMAL)
    await harness.producer.send_and_wait(topic, b'{"id": "x y", "model": 3}', key="bad", partition=0)
    good = harness.request()
    await harness.producer.send_and_wait(topic, good.to_bytes(), key=good.id, partition=0)
    dead = await asyncio.wait_for(harness.dlq.getone(), 20)
    assert dead.value == b'{"id": "x y", "model": 3}'
    info = dead_letter_from_headers(dead.headers)
    assert info.topic == topic and "model" in info.error
    events = await harness.events_until_terminal(good.id)
    assert events[-1].kind is ReplyKind.FINAL


async def test_expired_request_is_answered_without_running(harness: Harness) -> None:
    request = harness.request(deadline=time.time() - 1)
    await harness.send(request)
    (event,) = await harness.events_until_terminal(request.id)
    assert event.kind is ReplyKind.ERROR and event.error.code is ErrorCode.DEADLINE_EXCEEDED
    result = await harness.result_for(request.id)
    assert result.error.code is ErrorCode.DEADLINE_EXCEEDED and result.worker_id is None


async def test_unknown_model_ends_with_model_not_found(harness: Harness) -> None:
    request = harness.request(model="no-such-model")
    await harness.send(request)
    (event,) = await harness.events_until_terminal(request.id)
    assert event.kind is ReplyKind.ERROR and event.error.code is ErrorCode.MODEL_NOT_FOUND


async def test_cancellation_stops_a_running_request(harness: Harness) -> None:
    request = harness.request(stream=True, params=GenerationParams(max_new_tokens=2_000))
    await harness.send(request)
    first = ReplyEvent.from_bytes((await asyncio.wait_for(harness.replies.getone(), 20)).value)
    assert first.request_id == request.id and first.kind is ReplyKind.DELTA
    await harness.producer.send_and_wait(
        harness.topics.cancellations, Cancel(request_id=request.id, reason="test").to_bytes(), key=request.id
    )
    events = await harness.events_until_terminal(request.id, timeout=10)
    assert events[-1].kind is ReplyKind.ERROR and events[-1].error.code is ErrorCode.CANCELLED
    assert sum(1 for e in events if e.kind is ReplyKind.DELTA) < 1_999


async def test_worker_dying_mid_stream_continues_on_another(harness: Harness) -> None:
    request = harness.request(stream=True, params=GenerationParams(max_new_tokens=60))
    await harness.send(request)
    first = ReplyEvent.from_bytes((await asyncio.wait_for(harness.replies.getone(), 20)).value)
    assert first.request_id == request.id
    victim = next(w for w in harness.workers if w.settings.instance_id == first.worker_id)
    # Abrupt: the gRPC server goes away without draining, as with kill -9.
    await victim._server.stop(grace=0)  # noqa: SLF001 - the test's fault injection
    events = [first] + await harness.events_until_terminal(request.id, timeout=30)
    final = events[-1]
    assert final.kind is ReplyKind.FINAL, final
    deltas = [e for e in events if e.kind is ReplyKind.DELTA]
    assert final.text == "".join(e.text for e in deltas)  # one coherent stream
    assert final.usage.completion_tokens == 60
    assert final.worker_id != victim.settings.instance_id
    assert [e.seq for e in events] == list(range(len(events)))
