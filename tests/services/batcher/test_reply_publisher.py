"""The reply publisher against the real Tansu broker: which delta events carry log probabilities,
and where (the final event never does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.batcher.reply_publisher import LOGPROB_CHUNK_TOKENS, ReplyPublisher
from services.batcher.request_state import RequestState
from shared.kafka_clients import make_consumer, make_producer
from shared.records import (
    FinishReason,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    Priority,
    ReplyEvent,
    ReplyKind,
    TokenLogprob,
    TopLogprob,
)
from shared.settings import ClusterSettings
from shared.topics import Topics, TopicSpec, ensure_topics


@dataclass
class Replies:
    """A publisher on the real broker and consumers of what it writes."""

    publisher: ReplyPublisher
    reply_topic: str
    replies: AIOKafkaConsumer
    results: AIOKafkaConsumer

    def state(self, *, stream: bool, held: bool = False, reply_to: bool = True) -> RequestState:
        request = GenerationRequest(
            id=f"r-{time.monotonic_ns()}",
            model="m",
            prompt="hi",
            params=GenerationParams(max_new_tokens=1_000, logprobs=True, top_logprobs=2),
            stream=stream,
            reply_to=self.reply_topic if reply_to else None,
        )
        return RequestState(request, Priority.NORMAL, TopicPartition("x", 0), 0, held=held)

    async def events_until_final(self, request_id: str, timeout: float = 20) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        async with asyncio.timeout(timeout):
            while True:
                event = ReplyEvent.from_bytes((await self.replies.getone()).value)
                if event.request_id == request_id:
                    events.append(event)
                    if event.terminal:
                        return events

    async def result_for(self, request_id: str, timeout: float = 20) -> GenerationResult:
        async with asyncio.timeout(timeout):
            while True:
                result = GenerationResult.from_bytes((await self.results.getone()).value)
                if result.request_id == request_id:
                    return result


@pytest.fixture
async def replies(cluster_settings: ClusterSettings) -> AsyncIterator[Replies]:
    topics = Topics.from_settings(cluster_settings)
    reply_topic = f"{cluster_settings.topic_prefix}.replies.test"
    await ensure_topics(cluster_settings, [TopicSpec(reply_topic, 1, 1), TopicSpec(topics.results, 1, 1)])
    producer: AIOKafkaProducer = make_producer(cluster_settings, client_id="test-publisher")
    reply_consumer = make_consumer(cluster_settings, reply_topic, client_id="test-replies", group_id=None)
    result_consumer = make_consumer(cluster_settings, topics.results, client_id="test-results", group_id=None)
    for client in (producer, reply_consumer, result_consumer):
        await client.start()
    try:
        yield Replies(ReplyPublisher(producer, topics), reply_topic, reply_consumer, result_consumer)
    finally:
        for client in (reply_consumer, result_consumer, producer):
            await client.stop()


def logprobs(n: int, start: int = 0) -> tuple[TokenLogprob, ...]:
    """`n` tokens' log probabilities, each with two alternatives; token ids count from `start`."""
    return tuple(
        TokenLogprob(
            token_id=i,
            token=f"t{i}",
            logprob=-0.5,
            top=(TopLogprob(token_id=i, token=f"t{i}", logprob=-0.5), TopLogprob(token_id=0, token="x", logprob=-2.0)),
        )
        for i in range(start, start + n)
    )


async def test_a_streaming_request_gets_its_logprobs_on_its_deltas(replies: Replies) -> None:
    state = replies.state(stream=True)
    await replies.publisher.delta(state, "Hel", logprobs(2))
    await replies.publisher.delta(state, "", logprobs(1, start=2))  # no text yet: still sent
    await replies.publisher.delta(state, "lo", ())
    state.text, state.tokens = "Hello", 3
    await replies.publisher.final(state, FinishReason.STOP)
    events = await replies.events_until_final(state.id)
    assert [(e.kind, e.text) for e in events] == [
        (ReplyKind.DELTA, "Hel"), (ReplyKind.DELTA, ""), (ReplyKind.DELTA, "lo"), (ReplyKind.FINAL, "Hello"),
    ]
    assert [[lp.token_id for lp in e.logprobs] for e in events] == [[0, 1], [2], [], []]
    assert [top.token for top in events[0].logprobs[0].top] == ["t0", "x"]
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert state.logprobs == []


async def test_a_non_streaming_request_gets_them_in_chunks_just_before_its_final(replies: Replies) -> None:
    state = replies.state(stream=False)
    total = 2 * LOGPROB_CHUNK_TOKENS + 5
    await replies.publisher.delta(state, "a" * 10, logprobs(LOGPROB_CHUNK_TOKENS + 3))
    await replies.publisher.delta(state, "b" * 10, logprobs(total - LOGPROB_CHUNK_TOKENS - 3, LOGPROB_CHUNK_TOKENS + 3))
    assert len(state.logprobs) == total  # kept, nothing published yet
    state.text, state.tokens = "a" * 10 + "b" * 10, total
    await replies.publisher.final(state, FinishReason.LENGTH)
    events = await replies.events_until_final(state.id)
    deltas, final = events[:-1], events[-1]
    assert [len(e.logprobs) for e in deltas] == [LOGPROB_CHUNK_TOKENS, LOGPROB_CHUNK_TOKENS, 5]
    assert all(e.kind is ReplyKind.DELTA and e.text == "" for e in deltas)
    assert [lp.token_id for e in deltas for lp in e.logprobs] == list(range(total))
    assert final.kind is ReplyKind.FINAL and final.text == state.text and final.logprobs == ()
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert (await replies.result_for(state.id)).text == state.text
    assert state.logprobs == []


async def test_a_held_answer_gets_them_before_its_final_when_it_is_sent_as_generated(replies: Replies) -> None:
    state = replies.state(stream=True, held=True)
    await replies.publisher.delta(state, "fine", logprobs(1))
    state.text, state.tokens = "fine", 1
    await replies.publisher.final(state, FinishReason.STOP, reply_text="fine")  # allowed: the same text
    events = await replies.events_until_final(state.id)
    assert [(e.kind, e.text, len(e.logprobs)) for e in events] == [
        (ReplyKind.DELTA, "", 1), (ReplyKind.FINAL, "fine", 0),
    ]


async def test_a_redacted_held_answer_gets_no_logprobs(replies: Replies) -> None:
    state = replies.state(stream=True, held=True)
    await replies.publisher.delta(state, "call 555-0100", logprobs(4))
    state.text, state.tokens = "call 555-0100", 4
    await replies.publisher.final(state, FinishReason.STOP, reply_text="call [REDACTED]")
    events = await replies.events_until_final(state.id)
    assert [(e.kind, e.text) for e in events] == [(ReplyKind.FINAL, "call [REDACTED]")]
    assert state.logprobs == []


async def test_without_reply_to_nothing_is_kept_or_published(replies: Replies) -> None:
    state = replies.state(stream=False, reply_to=False)
    await replies.publisher.delta(state, "x", logprobs(3))
    assert state.logprobs == []
    state.text, state.tokens = "x", 3
    await replies.publisher.final(state, FinishReason.STOP)
    assert (await replies.result_for(state.id)).text == "x"
    reply_partition = TopicPartition(replies.reply_topic, 0)
    assert await replies.replies.end_offsets([reply_partition]) == {reply_partition: 0}


async def test_prompt_logprobs_come_first_in_chunks_streamed_or_not(replies: Replies) -> None:
    prompt = LOGPROB_CHUNK_TOKENS + 2
    streamed = replies.state(stream=True)
    await replies.publisher.delta(streamed, "Hi", logprobs(1, start=500), logprobs(prompt))
    streamed.text, streamed.tokens = "Hi", 1
    await replies.publisher.final(streamed, FinishReason.STOP)
    events = await replies.events_until_final(streamed.id)
    # The prompt's, in two deltas of empty text, before the answer's first delta.
    assert [(e.text, len(e.prompt_logprobs), len(e.logprobs)) for e in events[:-1]] == [
        ("", LOGPROB_CHUNK_TOKENS, 0), ("", 2, 0), ("Hi", 0, 1),
    ]
    assert [lp.token_id for e in events for lp in e.prompt_logprobs] == list(range(prompt))
    assert events[-1].kind is ReplyKind.FINAL and events[-1].prompt_logprobs == ()

    whole = replies.state(stream=False)
    await replies.publisher.delta(whole, "Hi", logprobs(1, start=500), logprobs(3))
    assert len(whole.prompt_logprobs) == 3  # kept for the end
    whole.text, whole.tokens = "Hi", 1
    await replies.publisher.final(whole, FinishReason.STOP)
    events = await replies.events_until_final(whole.id)
    assert [(len(e.prompt_logprobs), len(e.logprobs)) for e in events] == [(3, 0), (0, 1), (0, 0)]
    assert whole.prompt_logprobs == []


async def test_a_token_prompts_decoding_goes_out_once_on_the_first_delta(replies: Replies) -> None:
    def token_state(*, stream: bool) -> RequestState:
        request = GenerationRequest(
            id=f"r-{time.monotonic_ns()}",
            model="m",
            prompt_token_ids=(7, 8),
            stream=stream,
            reply_to=replies.reply_topic,
        )
        return RequestState(request, Priority.NORMAL, TopicPartition("x", 0), 0)

    # Streamed: on a delta of its own at once (the dispatcher sets it as the worker sends it).
    streamed = token_state(stream=True)
    streamed.decoded_prompt = "seven eight"
    await replies.publisher.delta(streamed, "", ())
    await replies.publisher.delta(streamed, "Hi", ())
    streamed.text, streamed.tokens = "Hi", 1
    await replies.publisher.final(streamed, FinishReason.STOP)
    events = await replies.events_until_final(streamed.id)
    assert [(e.kind, e.text, e.prompt_text) for e in events] == [
        (ReplyKind.DELTA, "", "seven eight"), (ReplyKind.DELTA, "Hi", None), (ReplyKind.FINAL, "Hi", None),
    ]
    result = await replies.result_for(streamed.id)
    assert result.prompt == "seven eight"  # the guardian sees the decoded prompt

    # Not streamed: on a delta of empty text just before the final event.
    whole = token_state(stream=False)
    whole.decoded_prompt = "seven eight"
    await replies.publisher.delta(whole, "Hi", ())
    whole.text, whole.tokens = "Hi", 1
    await replies.publisher.final(whole, FinishReason.STOP)
    events = await replies.events_until_final(whole.id)
    assert [(e.kind, e.text, e.prompt_text) for e in events] == [
        (ReplyKind.DELTA, "", "seven eight"), (ReplyKind.FINAL, "Hi", None),
    ]


async def test_token_ids_travel_as_log_probabilities_do_the_prompts_once_first(replies: Replies) -> None:
    def ids_state(*, stream: bool) -> RequestState:
        request = GenerationRequest(
            id=f"r-{time.monotonic_ns()}",
            model="m",
            prompt="hi",
            params=GenerationParams(return_token_ids=True),
            stream=stream,
            reply_to=replies.reply_topic,
        )
        return RequestState(request, Priority.NORMAL, TopicPartition("x", 0), 0)

    # Streamed: the prompt's at once on a delta of their own, each delta's with it; the last
    # (an end-of-sequence token's) on a delta of empty text.
    streamed = ids_state(stream=True)
    streamed.worker_prompt_ids = (5, 6)
    await replies.publisher.delta(streamed, "", ())
    await replies.publisher.delta(streamed, "Hi", (), (), (40,))
    await replies.publisher.delta(streamed, "", (), (), (2,))
    streamed.text, streamed.tokens = "Hi", 2
    await replies.publisher.final(streamed, FinishReason.STOP)
    events = await replies.events_until_final(streamed.id)
    assert [(e.kind, e.text, e.prompt_token_ids, e.token_ids) for e in events] == [
        (ReplyKind.DELTA, "", (5, 6), ()),
        (ReplyKind.DELTA, "Hi", (), (40,)),
        (ReplyKind.DELTA, "", (), (2,)),
        (ReplyKind.FINAL, "Hi", (), ()),
    ]

    # Not streamed: kept, then in chunks of LOGPROB_CHUNK_TOKENS just before the final event.
    whole = ids_state(stream=False)
    whole.worker_prompt_ids = (5, 6)
    many = tuple(range(LOGPROB_CHUNK_TOKENS + 3))
    await replies.publisher.delta(whole, "Hi", (), (), many)
    assert whole.token_ids == list(many)
    whole.text, whole.tokens = "Hi", len(many)
    await replies.publisher.final(whole, FinishReason.LENGTH)
    events = await replies.events_until_final(whole.id)
    assert [(e.text, e.prompt_token_ids, len(e.token_ids)) for e in events] == [
        ("", (5, 6), LOGPROB_CHUNK_TOKENS), ("", (), 3), ("Hi", (), 0),
    ]
    assert [t for e in events for t in e.token_ids] == list(many) and whole.token_ids == []

    # A held answer replaced by redacted text: its ids would spell out the withheld text.
    held = ids_state(stream=True)
    held.held = True
    await replies.publisher.delta(held, "call 555-0100", (), (), (1, 2, 3))
    held.text, held.tokens = "call 555-0100", 3
    await replies.publisher.final(held, FinishReason.STOP, reply_text="call [REDACTED]")
    events = await replies.events_until_final(held.id)
    assert [(e.kind, e.token_ids) for e in events] == [(ReplyKind.FINAL, ())]
