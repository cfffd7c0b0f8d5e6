"""ResultConsumer against the real Tansu broker: results in, verdicts and dead letters out, offsets
committed only after publishing, and records re-read when publishing fails."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import TopicPartition

from services.guardian.evaluator import Evaluator
from services.guardian.metrics import GuardianMetrics
from services.guardian.result_consumer import ResultConsumer
from services.guardian.settings import GuardianSettings
from shared.deadletter import dead_letter_from_headers
from shared.kafka_clients import make_consumer, make_producer
from shared.records import GenerationResult, GuardianVerdict, GuardMode, Priority
from shared.topics import Topics
from tests.services.guardian.conftest import no_more_records, read_topic


def _result(request_id: str, text: str, guard: GuardMode = GuardMode.ASYNC) -> GenerationResult:
    return GenerationResult(
        request_id=request_id, tenant="acme", model="SmolLM2-135M-Instruct", priority=Priority.NORMAL,
        prompt="user: hi", text=text, guard=guard,
    )


@contextlib.asynccontextmanager
async def _running(settings: GuardianSettings, producer=None):
    """A ResultConsumer in the guardian's group, running in a task; yields (metrics, consumer, task)."""
    topics = Topics.from_settings(settings)
    consumer = make_consumer(settings, topics.results, client_id="guardian-test", group_id=settings.consumer_group)
    own_producer = producer is None
    producer = producer or make_producer(settings, client_id="guardian-test")
    if own_producer:
        await producer.start()
    await consumer.start()
    metrics = GuardianMetrics()
    loop = ResultConsumer(
        consumer, producer, Evaluator(), metrics, topics, consumer_name="guardian:test", retry_backoff_s=0.1
    )
    task = asyncio.create_task(loop.run())
    try:
        yield metrics, consumer, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
        if own_producer:
            await producer.stop()


async def _produce(settings: GuardianSettings, *values: tuple[str, bytes]) -> None:
    producer = make_producer(settings, client_id="test-writer")
    await producer.start()
    try:
        for key, value in values:
            # One key: one partition, so the records keep their order.
            await producer.send_and_wait(Topics.from_settings(settings).results, value, key=key)
    finally:
        await producer.stop()


async def test_results_become_verdicts_and_garbage_goes_to_the_dead_letter_topic(
    guardian_settings: GuardianSettings,
) -> None:
    topics = Topics.from_settings(guardian_settings)
    garbage = b'{"request_id": "r-bad", "text": 1'
    await _produce(
        guardian_settings,
        ("k", _result("r-pii", "Reach me at jane@example.com").to_bytes()),
        ("k", garbage),
        ("k", _result("r-off", "jane@example.com", guard=GuardMode.OFF).to_bytes()),
        ("k", _result("r-clean", "Paris is the capital of France.").to_bytes()),
    )
    async with _running(guardian_settings) as (metrics, consumer, _):
        verdict_records = await read_topic(guardian_settings, topics.verdicts, 2)
        dead = await read_topic(guardian_settings, topics.deadletter, 1)

        verdicts = {r.key.decode(): GuardianVerdict.from_bytes(r.value) for r in verdict_records}
        assert set(verdicts) == {"r-pii", "r-clean"}  # guard=off is not judged
        assert verdicts["r-pii"].action.value == "redact"
        assert verdicts["r-pii"].redacted_text == "Reach me at [REDACTED_EMAIL]"
        assert verdicts["r-pii"].tenant == "acme" and verdicts["r-pii"].kind == "response"
        assert verdicts["r-clean"].action.value == "allow"

        assert len(dead) == 1 and dead[0].value == garbage and dead[0].key == b"k"
        info = dead_letter_from_headers(dead[0].headers)
        assert info.error.startswith("invalid GenerationResult") and info.topic == topics.results
        assert info.consumer == "guardian:test"

        # Everything was committed once handled (dead-lettered and skipped records included).
        tp = next(iter(consumer.assignment()))
        for _ in range(100):
            if await consumer.committed(tp) == 4:
                break
            await asyncio.sleep(0.05)
        assert await consumer.committed(tp) == 4
        assert metrics.results.labels("evaluated")._value.get() == 2
        assert metrics.results.labels("skipped")._value.get() == 1
        assert metrics.results.labels("deadlettered")._value.get() == 1
        assert await no_more_records(guardian_settings, topics.verdicts, 2)


async def test_records_are_read_again_when_verdicts_cannot_be_published(guardian_settings: GuardianSettings) -> None:
    topics = Topics.from_settings(guardian_settings)
    await _produce(guardian_settings, ("k", _result("r-1", "card 4111 1111 1111 1111").to_bytes()))

    # A producer that is already closed: every send fails like a lost broker connection would.
    closed = make_producer(guardian_settings, client_id="closed")
    await closed.start()
    await closed.stop()
    async with _running(guardian_settings, producer=closed) as (metrics, consumer, failing):
        for _ in range(200):
            if metrics.publish_failures._value.get() >= 2:
                break
            await asyncio.sleep(0.05)
        assert metrics.publish_failures._value.get() >= 2  # it retried instead of skipping
        tp = TopicPartition(topics.results, 0)
        assert await consumer.committed(tp) is None  # nothing committed past the unpublished verdict

        failing.cancel()
        await asyncio.gather(failing, return_exceptions=True)
        # The cancel may land after a fetch moved the position; resume from the committed offset
        # as any restarted guardian would (nothing was committed, so that is the start).
        await consumer.seek_to_committed(tp)

        # The broker is "back": a loop with a working producer on the same consumer (same group
        # member, no rejoin: Tansu makes a rejoin take ~18 s) reads the record again.
        healthy = make_producer(guardian_settings, client_id="healthy")
        await healthy.start()
        loop = ResultConsumer(consumer, healthy, Evaluator(), GuardianMetrics(), topics, consumer_name="guardian:test")
        task = asyncio.create_task(loop.run())
        try:
            verdicts = await read_topic(guardian_settings, topics.verdicts, 1)
            assert [GuardianVerdict.from_bytes(r.value).action.value for r in verdicts] == ["redact"]
            for _ in range(100):
                if await consumer.committed(tp) == 1:
                    break
                await asyncio.sleep(0.05)
            assert await consumer.committed(tp) == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await healthy.stop()
