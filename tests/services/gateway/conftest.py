"""Fixtures for the gateway's tests: a registered (fake) worker, a fake batcher, and gateways.

The fake batcher is a test double of the batcher service for the gateway's own tests only: it
consumes the real request topics on the real Tansu broker and answers on each request's `reply_to`
with ReplyEvents, as the batcher does. The prompt steers it:

* `[hold]`: no answer at all (timeouts, in-flight bound, disconnects);
* `[stall]`: streaming: the first delta, then nothing;
* `[slow]`: the answer, half a second late;
* `[error:<code>]`: an error event with that ErrorCode (with `[late]` and streaming: after one
  delta);
* `[dup]`: every event twice, and one more delta after the final event;
* `[fail-choice:<i>]`: choice i of a request of several choices (id `<request id>.<i>`) fails with
  `worker_failed` after 0.3 s (so that its siblings' first events come first); the other choices
  are answered as the rest of the prompt says;
* anything else: the canned answer, as deltas (streaming) then a final event.

With `params.logprobs` it sends log probabilities as the batcher does (`fake_logprobs`): on each
token's delta when streaming, else on one delta of empty text just before the final event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.kafka_clients import make_consumer, make_producer
from shared.records import (
    Cancel,
    ErrorCode,
    ErrorInfo,
    FinishReason,
    GenerationRequest,
    ReplyEvent,
    ReplyKind,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics
from shared.worker_registry import WorkerInfo, WorkerRegistry

from services.gateway.service import GatewayService
from services.gateway.settings import GatewaySettings

FAKE_MODEL = "fake-model"
ANSWER_TOKENS = ("Hello", " from", " the", " fake", " batcher", ".")
ANSWER = "".join(ANSWER_TOKENS)


def fake_logprobs(position: int, token: str, top: int) -> TokenLogprob:
    """The fake batcher's log probability of the answer's `position`-th token: -0.1 * (position +
    1), with `top` alternatives: the token itself, then `alt1`, `alt2`, ... (each 1 lower)."""
    logprob = round(-0.1 * (position + 1), 6)
    alternatives = [TopLogprob(token_id=position, token=token, logprob=logprob)] + [
        TopLogprob(token_id=1_000 + k, token=f"alt{k}", logprob=logprob - k) for k in range(1, top)
    ]
    return TokenLogprob(token_id=position, token=token, logprob=logprob, top=tuple(alternatives[:top]))


def fake_prompt_logprobs(prompt: str, top: int) -> tuple[TokenLogprob, ...]:
    """The fake batcher's prompt log probabilities: one token per word (with its leading space),
    the first with none (0), the others as `fake_logprobs` gives position `position`, each the
    most likely there (rank 1)."""
    words = prompt.split(" ")
    entries = [TokenLogprob(token_id=5_000, token=words[0], logprob=0.0)]
    for position, word in enumerate(words[1:], start=1):
        entry = fake_logprobs(position, f" {word}", top)
        token_id = 5_000 + position
        # The token itself leads its alternatives: it has the same id there.
        alternatives = tuple(
            t.model_copy(update={"token_id": token_id}) if i == 0 else t for i, t in enumerate(entry.top)
        )
        entries.append(entry.model_copy(update={"token_id": token_id, "rank": 1, "top": alternatives}))
    return tuple(entries)


def decoded_prompt(token_ids: tuple[int, ...]) -> str:
    """The fake batcher's decoding of a prompt of token ids: token `i` is the word `w<i>`."""
    return " ".join(f"w{token}" for token in token_ids)


def prompt_of(request: GenerationRequest) -> str:
    if request.prompt_token_ids is not None:
        return decoded_prompt(request.prompt_token_ids)
    if request.prompt is not None:
        return request.prompt
    assert request.messages is not None
    return "\n".join(m.content for m in request.messages)


class FakeBatcher:
    """Answers GenerationRequests from the request topics on their `reply_to` topic."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.requests: list[GenerationRequest] = []
        self.cancels: dict[str, Cancel] = {}
        self._cancel_seen = asyncio.Condition()
        self._request_seen = asyncio.Condition()
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await ensure_topics(self.settings, self.topics.cluster_topics(self.settings))
        self._producer = make_producer(self.settings, client_id="fake-batcher")
        await self._producer.start()
        requests = make_consumer(self.settings, *self.topics.all_requests, client_id="fake-batcher", group_id=None)
        cancels = make_consumer(self.settings, self.topics.cancellations, client_id="fake-batcher-c", group_id=None)
        for consumer in (requests, cancels):
            await consumer.start()
            self._consumers.append(consumer)
        self._tasks = [
            asyncio.create_task(self._serve_requests(requests)),
            asyncio.create_task(self._watch_cancels(cancels)),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._answering]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._answering, return_exceptions=True)
        for consumer in self._consumers:
            await consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def wait_for_cancel(self, request_id: str, timeout: float = 10.0) -> Cancel:
        async with asyncio.timeout(timeout):
            async with self._cancel_seen:
                await self._cancel_seen.wait_for(lambda: request_id in self.cancels)
        return self.cancels[request_id]

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[GenerationRequest]:
        async with asyncio.timeout(timeout):
            async with self._request_seen:
                await self._request_seen.wait_for(lambda: len(self.requests) >= n)
        return self.requests

    async def _watch_cancels(self, consumer: AIOKafkaConsumer) -> None:
        async for record in consumer:
            cancel = Cancel.from_bytes(record.value)
            async with self._cancel_seen:
                self.cancels[cancel.request_id] = cancel
                self._cancel_seen.notify_all()

    async def _serve_requests(self, consumer: AIOKafkaConsumer) -> None:
        async for record in consumer:
            request = GenerationRequest.from_bytes(record.value)
            async with self._request_seen:
                self.requests.append(request)
                self._request_seen.notify_all()
            if request.reply_to is not None:
                task = asyncio.create_task(self._answer(request))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)

    async def _send(self, request: GenerationRequest, event: ReplyEvent, times: int = 1) -> None:
        assert self._producer is not None and request.reply_to is not None
        for _ in range(times):
            await self._producer.send_and_wait(request.reply_to, event.to_bytes(), key=request.id)

    async def _answer(self, request: GenerationRequest) -> None:
        prompt = prompt_of(request)
        if "[fail-choice:" in prompt:
            failing = prompt.split("[fail-choice:", 1)[1].split("]", 1)[0]
            if request.id.endswith(f".{failing}"):
                await asyncio.sleep(0.3)
                error = ErrorInfo(code=ErrorCode.WORKER_FAILED, message="fake batcher says worker_failed")
                await self._send(request, ReplyEvent(request_id=request.id, kind=ReplyKind.ERROR, seq=0, error=error))
                return
        if "[hold]" in prompt:
            return
        if "[slow]" in prompt:
            await asyncio.sleep(0.5)
        times = 2 if "[dup]" in prompt else 1
        tokens = ANSWER_TOKENS[: request.params.max_new_tokens]
        params = request.params
        logprobs = [fake_logprobs(i, t, params.top_logprobs) for i, t in enumerate(tokens)] if params.logprobs else []
        # Token ids where asked: token i of the answer is id 100 + i; the prompt's words are 1, 2, ...
        ids = [100 + i for i in range(len(tokens))] if params.return_token_ids else []
        prompt_ids: tuple[int, ...] = ()
        if params.return_token_ids:
            prompt_ids = request.prompt_token_ids or tuple(range(1, len(prompt.split()) + 1))
        seq = 0
        if request.prompt_token_ids is not None or prompt_ids:  # what the worker tells of the prompt, first
            decoded = prompt if request.prompt_token_ids is not None else None
            event = ReplyEvent(
                request_id=request.id, kind=ReplyKind.DELTA, seq=seq, prompt_text=decoded, prompt_token_ids=prompt_ids
            )
            await self._send(request, event, times)
            seq += 1
        if params.prompt_logprobs is not None:
            prompt_entries = fake_prompt_logprobs(prompt, params.prompt_logprobs)
            event = ReplyEvent(request_id=request.id, kind=ReplyKind.DELTA, seq=seq, prompt_logprobs=prompt_entries)
            await self._send(request, event, times)
            seq += 1
        if request.stream:
            if "[error:" in prompt:
                limit = 1 if "[late]" in prompt else 0
            else:
                limit = 1 if "[stall]" in prompt else len(tokens)
            for i, token in enumerate(tokens[:limit]):
                delta = ReplyEvent(
                    request_id=request.id,
                    kind=ReplyKind.DELTA,
                    seq=seq,
                    text=token,
                    logprobs=tuple(logprobs[i : i + 1]),
                    token_ids=tuple(ids[i : i + 1]),
                )
                await self._send(request, delta, times)
                seq += 1
        elif (logprobs or ids) and "[stall]" not in prompt and "[error:" not in prompt:
            delta = ReplyEvent(
                request_id=request.id, kind=ReplyKind.DELTA, seq=seq, text="",
                logprobs=tuple(logprobs), token_ids=tuple(ids),
            )
            await self._send(request, delta, times)
            seq += 1
        if "[stall]" in prompt:
            return
        if "[error:" in prompt:
            code = ErrorCode(prompt.split("[error:", 1)[1].split("]", 1)[0])
            error = ErrorInfo(code=code, message=f"fake batcher says {code.value}", retryable=True)
            await self._send(request, ReplyEvent(request_id=request.id, kind=ReplyKind.ERROR, seq=seq, error=error), times)
            return
        final = ReplyEvent(
            request_id=request.id,
            kind=ReplyKind.FINAL,
            seq=seq,
            text="".join(tokens),
            finish_reason=FinishReason.LENGTH if len(tokens) < len(ANSWER_TOKENS) else FinishReason.STOP,
            usage=Usage(prompt_tokens=len(prompt.split()), completion_tokens=len(tokens)),
            model=request.model,
            worker_id="fake-worker",
        )
        await self._send(request, final, times)
        if times == 2:
            late = ReplyEvent(request_id=request.id, kind=ReplyKind.DELTA, seq=seq + 1, text=" LATE")
            await self._send(request, late)


@pytest.fixture
async def registered_worker(cluster_settings: ClusterSettings) -> AsyncIterator[WorkerInfo]:
    """A worker entry for FAKE_MODEL in the real Redis, under the test's prefix."""
    redis = aioredis.from_url(cluster_settings.redis_url)
    registry = WorkerRegistry(redis, prefix=cluster_settings.topic_prefix, ttl_s=600)
    info = WorkerInfo(
        worker_id="fake-worker", address="127.0.0.1:1", model=FAKE_MODEL, backend="simulated", capacity=8, simulated=True
    )
    await registry.register(info)
    try:
        yield info
    finally:
        await registry.deregister(info.worker_id)
        await redis.aclose()


@pytest.fixture
async def fake_batcher(cluster_settings: ClusterSettings) -> AsyncIterator[FakeBatcher]:
    batcher = FakeBatcher(cluster_settings)
    await batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


def gateway_settings(cluster_settings: ClusterSettings, **overrides: object) -> GatewaySettings:
    """GatewaySettings on the test's broker, Redis and prefix, listening on free ports."""
    values = cluster_settings.model_dump()
    values.update(gateway_http_port=0, gateway_grpc_port=0, metrics_interval_s=0.5, gateway_shutdown_grace_s=2)
    # The semantic cache loads MiniLM: only the tests about it turn it on.
    values.update(gateway_semantic_cache_enabled=False)
    values.update(overrides)
    return GatewaySettings(**values)


GatewayFactory = Callable[..., Awaitable[GatewayService]]


@pytest.fixture
async def start_gateway(cluster_settings: ClusterSettings) -> AsyncIterator[GatewayFactory]:
    """Starts gateways in-process with setting overrides; stops them after the test."""
    started: list[GatewayService] = []

    async def start(**overrides: object) -> GatewayService:
        service = GatewayService(gateway_settings(cluster_settings, **overrides))
        await service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            with contextlib.suppress(Exception):
                await service.stop()
