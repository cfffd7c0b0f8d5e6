"""Publishes what happens to a request: token deltas and the terminal event to its `reply_to`
topic, and the GenerationResult to the results topic.

The terminal event and the result are awaited (the broker has them) before the caller marks the
request's offset finished: that ordering is what makes "commit only after the final reply" hold.
Deltas are sent without waiting for each acknowledgement (latency), but Kafka keeps a partition's
records in order and the terminal event on the same partition is awaited, so every delta is
durable before the offset moves.

With a doorbell ringer (shared/doorbell.py), every reply record is announced to the gateway once
acknowledged, so its reply consumer needs no fetch in flight to see it soon.

Log probabilities (requests with `params.logprobs`) travel only on delta events, never on the final
one, so that no record holds a whole long answer's worth of them: a streaming request gets them on
the deltas of the tokens they belong to; a request that does not stream, or whose answer is held
for the guardian, gets them as deltas of empty text just before its final event (Kafka keeps the
partition's order, so they arrive first). No delta carries more than `LOGPROB_CHUNK_TOKENS` tokens'
worth. A held answer that the guardian replaced by redacted text gets none: they would spell out,
token by token, the text that was withheld.

The prompt tokens' log probabilities (requests with `params.prompt_logprobs`) travel the same way,
on their own deltas of empty text (`prompt_logprobs`, at most `LOGPROB_CHUNK_TOKENS` positions
each), before any delta of the answer: at once for a streaming request, just before the generated
tokens' for the others. They are about the client's own prompt, so a held answer keeps them.
A prompt given as token ids comes back decoded by the worker (`prompt_text`) the same way, once,
on the first delta that leaves (one of its own if nothing else is ready); so do the prompt's token
ids (requests with `params.return_token_ids`: `prompt_token_ids`). The generated tokens' ids
(`token_ids`) travel as their log probabilities do, and are dropped likewise from a held answer
replaced by redacted text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from services.batcher.request_state import RequestState
from shared.doorbell import DoorbellRinger, send_announced
from shared.records import (
    ErrorCode,
    ErrorInfo,
    FinishReason,
    GenerationResult,
    ReplyEvent,
    ReplyKind,
    Timings,
    TokenLogprob,
    Usage,
)
from shared.topics import Topics

__all__ = ["LOGPROB_CHUNK_TOKENS", "ReplyPublisher"]

LOGPROB_CHUNK_TOKENS = 128
"""Most tokens' log probabilities one delta event carries. Each position can carry 21 entries (the
token and up to 20 alternatives, each with its text and id), so a delta of a long answer's worth
would make a record of megabytes, beyond `kafka_max_record_bytes` (1 MiB by default); 128 positions
of 21 entries of typical tokens make a record of about 150 kB."""


class ReplyPublisher:
    """Writes ReplyEvents and GenerationResults for requests in flight."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics, *, ringer: DoorbellRinger | None = None) -> None:
        self._producer = producer
        self._topics = topics
        self._ringer = ringer

    async def _send_reply(self, topic: str, value: bytes, key: str) -> asyncio.Future[object]:
        """Send a reply record; the returned future is its acknowledgement (then the doorbell rings)."""
        return await send_announced(self._producer, self._ringer, topic, value, key)

    async def delta(
        self,
        state: RequestState,
        text: str,
        logprobs: Sequence[TokenLogprob] = (),
        prompt_logprobs: Sequence[TokenLogprob] = (),
        token_ids: Sequence[int] = (),
    ) -> None:
        """A piece of the answer: `text` and its tokens' `logprobs` and `token_ids` (empty unless
        asked for), after the prompt's `prompt_logprobs` (the first delta's, when asked for). A
        streaming request gets it at once (also a piece of empty text that has log probabilities
        or token ids); one that does not stream, or is held, gets only the final event, and its
        log probabilities and token ids are kept for `final`."""
        if not state.request.reply_to:
            return  # nobody listens for replies: only the result is written
        if not state.request.stream or state.held:
            state.prompt_logprobs.extend(prompt_logprobs)
            state.logprobs.extend(logprobs)
            state.token_ids.extend(token_ids)
            return
        if text or logprobs or prompt_logprobs or token_ids or _prompt_unsent(state):
            await self._send_deltas(state, text, logprobs, prompt_logprobs, token_ids)

    async def _send_deltas(
        self,
        state: RequestState,
        text: str,
        logprobs: Sequence[TokenLogprob],
        prompt_logprobs: Sequence[TokenLogprob] = (),
        token_ids: Sequence[int] = (),
    ) -> None:
        """The prompt's log probabilities, then `text`, `logprobs` and `token_ids`, as delta
        events of at most `LOGPROB_CHUNK_TOKENS` positions each: the prompt's on deltas of their
        own, the text on the first of the answer's (none of those when it has neither text, log
        probabilities nor token ids). What the worker told of the prompt (its decoding, its token
        ids), when it has not left yet, goes on the first delta."""
        assert state.request.reply_to is not None
        size = LOGPROB_CHUNK_TOKENS
        chunks: list[tuple[str, tuple[TokenLogprob, ...], tuple[TokenLogprob, ...], tuple[int, ...]]] = [
            ("", (), tuple(prompt_logprobs[i : i + size]), ()) for i in range(0, len(prompt_logprobs), size)
        ]
        if text or logprobs or token_ids:
            positions = max(len(logprobs), len(token_ids), 1)
            chunks += [
                ("" if i else text, tuple(logprobs[i : i + size]), (), tuple(token_ids[i : i + size]))
                for i in range(0, positions, size)
            ]
        decoded, prompt_ids = None, ()
        if _prompt_unsent(state):
            decoded, prompt_ids = state.decoded_prompt, state.worker_prompt_ids
            state.worker_prompt_sent = True
            if not chunks:
                chunks.append(("", (), (), ()))
        for index, (chunk_text, chunk, prompt_chunk, ids_chunk) in enumerate(chunks):
            event = ReplyEvent(
                request_id=state.id,
                kind=ReplyKind.DELTA,
                seq=state.next_seq(),
                text=chunk_text,
                worker_id=state.worker_id,
                model=state.model,
                logprobs=chunk,
                prompt_logprobs=prompt_chunk,
                prompt_text=None if index else decoded,
                token_ids=ids_chunk,
                prompt_token_ids=() if index else prompt_ids,
            )
            # Not awaited per record: ordering within the partition plus the awaited terminal
            # event give durability; awaiting the send() call itself keeps memory bounded (it
            # waits when the producer's buffer is full).
            await self._send_reply(state.request.reply_to, event.to_bytes(), state.id)

    async def final(self, state: RequestState, reason: FinishReason, *, reply_text: str | None = None) -> None:
        """The request finished: the log probabilities kept back (as deltas of empty text), the
        final event with the whole text (or `reply_text`, a held answer's redacted text), then the
        result (always with the generated text). Kept log probabilities are dropped when
        `reply_text` differs from the generated text: they would reveal the withheld text."""
        usage = Usage(prompt_tokens=state.prompt_tokens, completion_tokens=state.tokens)
        kept, state.logprobs = state.logprobs, []
        kept_prompt, state.prompt_logprobs = state.prompt_logprobs, []
        kept_ids, state.token_ids = state.token_ids, []
        sends = []
        if state.request.reply_to:
            if not (reply_text is None or reply_text == state.text):
                kept, kept_ids = [], []  # they would spell out the withheld text
            if kept or kept_prompt or kept_ids or _prompt_unsent(state):
                await self._send_deltas(state, "", kept, kept_prompt, kept_ids)
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
        # An error event carries none: no answer is delivered.
        state.logprobs, state.prompt_logprobs, state.token_ids = [], [], []
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
            prompt=state.prompt_text,
            text=state.text if error is None else "",
            finish_reason=finish_reason,
            error=error,
            usage=usage,
            timings=timings,
            worker_id=state.worker_id,
            guard=request.guard,
        )


def _prompt_unsent(state: RequestState) -> bool:
    """Whether what a worker told of the request's prompt (the decoding of a prompt of token ids,
    the prompt's token ids) has yet to go out."""
    told = state.decoded_prompt is not None or bool(state.worker_prompt_ids)
    return told and not state.worker_prompt_sent
