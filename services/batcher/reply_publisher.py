"""Publishes what happens to a request: token deltas and the terminal event to its `reply_to`
topic, and the GenerationResult to the results topic.

The terminal event and the result are awaited (the broker has them) before the caller marks the
request's offset finished: that ordering is what makes "commit only after the final reply" hold.
Deltas are sent without waiting for each acknowledgement (latency), but Kafka keeps a partition's
records in order and the terminal event on the same partition is awaited, so every delta is
durable before the offset moves.

With a doorbell ringer (shared/doorbell.py), every reply record is announced to the gateway once
acknowledged, so its reply consumer needs no fetch in flight to see it soon.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer

from services.batcher.request_state import RequestState, prompt_text
from shared.doorbell import DoorbellRinger, send_announced
from shared.records import (
    ErrorCode,
    ErrorInfo,
    FinishReason,
    GenerationResult,
    ReplyEvent,
    ReplyKind,
    Timings,
    Usage,
)
from shared.topics import Topics

__all__ = ["ReplyPublisher"]


class ReplyPublisher:
    """Writes ReplyEvents and GenerationResults for requests in flight."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics, *, ringer: DoorbellRinger | None = None) -> None:
        self._producer = producer
        self._topics = topics
        self._ringer = ringer

    async def _send_reply(self, topic: str, value: bytes, key: str) -> asyncio.Future[object]:
        """Send a reply record; the returned future is its acknowledgement (then the doorbell rings)."""
        return await send_announced(self._producer, self._ringer, topic, value, key)

    async def delta(self, state: RequestState, text: str) -> None:
        """A piece of text for a streaming request (non-streaming ones only get the final event)."""
        if not state.request.stream or not state.request.reply_to or not text or state.held:
            return
        event = ReplyEvent(
            request_id=state.id,
            kind=ReplyKind.DELTA,
            seq=state.next_seq(),
            text=text,
            worker_id=state.worker_id,
            model=state.model,
        )
        # Not awaited per record: ordering within the partition plus the awaited terminal event
        # give durability; awaiting the send() call itself keeps memory bounded (it waits when the
        # producer's buffer is full).
        await self._send_reply(state.request.reply_to, event.to_bytes(), state.id)

    async def final(self, state: RequestState, reason: FinishReason, *, reply_text: str | None = None) -> None:
        """The request finished: the final event with the whole text (or `reply_text`, a held
        answer's redacted text), then the result (always with the generated text)."""
        usage = Usage(prompt_tokens=state.prompt_tokens, completion_tokens=state.tokens)
        sends = []
        if state.request.reply_to:
            event = ReplyEvent(
                request_id=state.id,
                kind=ReplyKind.FINAL,
                seq=state.next_seq(),
                text=state.text if reply_text is None else reply_text,
                finish_reason=reason,
                usage=usage,
                worker_id=state.worker_id,
                model=state.model,
            )
            sends.append(await self._send_reply(state.request.reply_to, event.to_bytes(), state.id))
        result = self._result(state, finish_reason=reason, usage=usage)
        sends.append(self._producer.send_and_wait(self._topics.results, result.to_bytes(), key=state.id))
        await asyncio.gather(*sends)

    async def error(self, state: RequestState, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        """The request ended without a result: the error event, then the result with the error."""
        info = ErrorInfo(code=code, message=message[:4_000], retryable=retryable)
        sends = []
        if state.request.reply_to:
            event = ReplyEvent(
                request_id=state.id,
                kind=ReplyKind.ERROR,
                seq=state.next_seq(),
                error=info,
                worker_id=state.worker_id,
                model=state.model,
            )
            sends.append(await self._send_reply(state.request.reply_to, event.to_bytes(), state.id))
        result = self._result(
            state, error=info, usage=Usage(prompt_tokens=state.prompt_tokens, completion_tokens=state.tokens)
        )
        sends.append(self._producer.send_and_wait(self._topics.results, result.to_bytes(), key=state.id))
        await asyncio.gather(*sends)

    def _result(
        self,
        state: RequestState,
        *,
        usage: Usage,
        finish_reason: FinishReason | None = None,
        error: ErrorInfo | None = None,
    ) -> GenerationResult:
        request = state.request
        now = time.time()
        dispatched = state.dispatched_at
        timings = Timings(
            queue_ms=max(0.0, (dispatched - request.created_at) * 1000) if dispatched else None,
            ttft_ms=(state.first_token_at - dispatched) * 1000 if dispatched and state.first_token_at else None,
            generation_ms=(now - dispatched) * 1000 if dispatched else None,
            total_ms=max(0.0, (now - request.created_at) * 1000),
        )
        return GenerationResult(
            request_id=request.id,
            tenant=request.tenant,
            model=state.model or request.model,
            priority=state.priority,
            prompt=prompt_text(request),
            text=state.text if error is None else "",
            finish_reason=finish_reason,
            error=error,
            usage=usage,
            timings=timings,
            worker_id=state.worker_id,
            guard=request.guard,
        )
