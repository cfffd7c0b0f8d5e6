"""Runs one micro-batch on the worker fleet until every request in it has ended.

Steps for a batch: (1) pick a worker by policy; (2) open one stream for all its requests
(GenerateBatched, or Generate on a worker of an earlier version);
(3) turn each event into a reply (deltas, final, error); (4) requests that the worker could not
finish (it died, its stream broke, it was overloaded, or it hangs: a stream silent for
`batcher_stream_stall_s` whose worker does not answer a probe, see stream_watchdog.py) go to another
worker, continuing after the text already delivered, so the client sees one coherent stream; after
`batcher_max_attempts` tries a request ends with `worker_failed`. Every request ends with exactly
one terminal reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import grpc

from services.batcher.answer_guard import AnswerGuard
from services.batcher.metrics import BatcherMetrics
from services.batcher.reply_publisher import ReplyPublisher
from services.batcher.request_state import RequestState
from services.batcher.settings import BatcherSettings
from services.batcher.stream_watchdog import StreamWatchdog
from services.batcher.worker_pool import WorkerHandle, WorkerPool
from shared.protos import worker_pb2
from shared.records import (
    MAX_PROMPT_TOKEN_IDS,
    MAX_TEXT_CHARS,
    MAX_TOKEN_CHARS,
    MAX_TOKEN_ID,
    MAX_TOP_LOGPROBS,
    MIN_LOGPROB,
    ErrorCode,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)
from shared.structured_logging import request_context

__all__ = ["BatchDispatcher", "logprobs_from_proto", "to_work_item", "token_ids_from_proto"]

log = logging.getLogger(__name__)

_FINISH = {
    worker_pb2.FINISH_REASON_STOP: FinishReason.STOP,
    worker_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    worker_pb2.FINISH_REASON_UNSPECIFIED: FinishReason.STOP,
}
# Failures another worker may not have; the rest end the request at once.
_RETRYABLE = {
    worker_pb2.FAILURE_CODE_OVERLOADED,
    worker_pb2.FAILURE_CODE_INTERNAL,
    worker_pb2.FAILURE_CODE_MODEL_NOT_FOUND,
    worker_pb2.FAILURE_CODE_UNSPECIFIED,
}
_FAILURE = {
    worker_pb2.FAILURE_CODE_INVALID_REQUEST: ErrorCode.INVALID_REQUEST,
    worker_pb2.FAILURE_CODE_DEADLINE_EXCEEDED: ErrorCode.DEADLINE_EXCEEDED,
    worker_pb2.FAILURE_CODE_OVERLOADED: ErrorCode.OVERLOADED,
    worker_pb2.FAILURE_CODE_MODEL_NOT_FOUND: ErrorCode.MODEL_NOT_FOUND,
    worker_pb2.FAILURE_CODE_INTERNAL: ErrorCode.WORKER_FAILED,
    worker_pb2.FAILURE_CODE_UNSPECIFIED: ErrorCode.WORKER_FAILED,
}


def to_work_item(state: RequestState) -> worker_pb2.WorkItem:
    """The request as the worker API wants it, continuing after text already delivered."""
    request: GenerationRequest = state.request
    p = request.params
    params = worker_pb2.SamplingParams(
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        stop=list(p.stop),
        seed=p.seed or 0,
        has_seed=p.seed is not None,
        repetition_penalty=p.repetition_penalty,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        logit_bias=p.logit_bias,
        logprobs=p.logprobs,
        top_logprobs=p.top_logprobs,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        stop_token_ids=p.stop_token_ids,
        # Once received they are the request's; a retry after a failure does not ask again.
        prompt_logprobs=p.prompt_logprobs is not None and not state.prompt_logprobs_received,
        prompt_top_logprobs=p.prompt_logprobs or 0,
        return_token_ids=p.return_token_ids,
    )
    return worker_pb2.WorkItem(
        request_id=request.id,
        prompt=request.prompt or "",
        messages=[worker_pb2.ChatMessage(role=m.role, content=m.content) for m in request.messages or ()],
        params=params,
        deadline_unix=request.deadline or 0.0,
        continuation=state.text,
        continuation_tokens=state.tokens,
        prompt_token_ids=request.prompt_token_ids or (),
    )


def _logprob(value: float) -> float:
    """A worker's (float32) log probability within the records' range [MIN_LOGPROB, 0] (NaN ->
    MIN_LOGPROB), to the 8 significant digits a float32 holds: -0.1234567 rather than the
    -0.12345670163631439 of its widening, which would only make records longer."""
    if not value >= MIN_LOGPROB:  # NaN and -inf too
        return MIN_LOGPROB
    return min(float(f"{value:.8g}"), 0.0)


def _top(entry: worker_pb2.TopLogprob) -> TopLogprob:
    return TopLogprob(
        token_id=min(entry.token_id, MAX_TOKEN_ID),
        token=entry.token[:MAX_TOKEN_CHARS],
        logprob=_logprob(entry.logprob),
    )


def token_ids_from_proto(ids: Iterable[int]) -> tuple[int, ...]:
    """A TokenDelta's token ids as the records take them (an id beyond the records' range, which
    no tokenizer has, becomes the largest one rather than failing the reply)."""
    return tuple(min(token, MAX_TOKEN_ID) for token in ids)


def logprobs_from_proto(entries: Iterable[worker_pb2.TokenLogprob]) -> tuple[TokenLogprob, ...]:
    """A TokenDelta's log probabilities as records. The one place they cross from the worker API:
    values are bounded to what a record holds (a float32 rounding of a probability of 1 can be a
    hair above 0, a masked token's is -inf), so that a worker's quirk cannot fail a whole stream."""
    return tuple(
        TokenLogprob(
            token_id=min(entry.token_id, MAX_TOKEN_ID),
            token=entry.token[:MAX_TOKEN_CHARS],
            logprob=_logprob(entry.logprob),
            top=tuple(_top(top) for top in entry.top[:MAX_TOP_LOGPROBS]),
            rank=entry.rank or None,
        )
        for entry in entries
    )


class BatchDispatcher:
    """Sends micro-batches to workers and publishes what comes back."""

    def __init__(
        self,
        settings: BatcherSettings,
        pool: WorkerPool,
        publisher: ReplyPublisher,
        metrics: BatcherMetrics,
        on_finished: Callable[[RequestState], None],
        guard: AnswerGuard,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._publisher = publisher
        self._guard = guard
        self._metrics = metrics
        self._release = on_finished
        #: request id -> the worker running it, for cancellation.
        self.running_on: dict[str, WorkerHandle] = {}
        self._background: set[asyncio.Task[int]] = set()

    async def cancel_on_worker(self, request_id: str) -> int:
        """Tell the worker running `request_id` to stop it; returns how many items it cancelled
        (0: not running anywhere, the worker does not have it (yet), or it could not be told)."""
        worker = self.running_on.get(request_id)
        if worker is None:
            return 0
        try:
            reply = await worker.stub.Cancel(worker_pb2.CancelRequest(request_ids=[request_id]), timeout=5)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            # Safe: if the worker cannot be told, the request still ends when the worker finishes
            # it or its stream breaks; it is marked cancelled, so it is answered as cancelled, and
            # the next text it sends triggers another try (_on_delta).
            log.warning("could not forward a cancellation to the worker", exc_info=True)
            return 0
        return int(reply.cancelled)

    async def run(self, batch: list[RequestState]) -> None:
        """Run `batch` (same model and sampling parameters) until each request has ended."""
        pending = batch
        while pending:
            pending = [s for s in pending if not await self._end_if_over(s)]
            if not pending:
                return
            model = pending[0].request.model
            tokens = sum(s.remaining_tokens for s in pending)
            tried = set().union(*(s.tried for s in pending))
            # prefix_affinity keys on the batch's first prompt (a batch shares sampling parameters,
            # not prompts; the first is as good a representative as any).
            first = pending[0].request
            # A prompt of token ids keys on its ids, written out (no text exists here).
            key = first.prompt_as_text() or " ".join(map(str, first.prompt_token_ids or ()))
            prefix = key[: self._settings.batcher_affinity_prefix_chars]
            worker = self._pool.pick(model, exclude=tried, tokens=tokens, prefix=prefix) or self._pool.pick(
                model, tokens=tokens, prefix=prefix
            )
            if worker is None:
                worker = await self._wait_for_worker(model, pending)
                if worker is None:
                    return
            pending = await self._run_on(worker, pending)

    async def _end_if_over(self, state: RequestState) -> bool:
        """End a request that was cancelled, expired or out of attempts; True if it ended."""
        if state.cancelled:
            await self._fail(state, ErrorCode.CANCELLED, f"cancelled: {state.cancelled}")
        elif state.request.expired():
            await self._fail(state, ErrorCode.DEADLINE_EXCEEDED, "the deadline passed before generation finished")
        elif state.attempts >= self._settings.batcher_max_attempts:
            await self._fail(
                state, ErrorCode.WORKER_FAILED, f"no worker finished it in {state.attempts} attempts", retryable=True
            )
        else:
            return False
        return True

    async def _wait_for_worker(self, model: str, pending: list[RequestState]) -> WorkerHandle | None:
        """Wait (bounded by the deadlines and `batcher_no_worker_wait_s`) for a worker serving `model`."""
        deadlines = [s.request.deadline for s in pending if s.request.deadline]
        limit = self._settings.batcher_no_worker_wait_s
        if deadlines:
            limit = min(limit, max(0.0, min(deadlines) - time.time()))
        worker = await self._pool.wait_for(model, timeout_s=limit)
        if worker is not None:
            return worker
        if self._pool.models():
            code, message = ErrorCode.MODEL_NOT_FOUND, f"no worker serves model {model!r}; served: {sorted(self._pool.models())}"
        else:
            code, message = ErrorCode.NO_WORKERS, "no worker is registered"
        for state in pending:
            if state.request.expired():
                await self._fail(state, ErrorCode.DEADLINE_EXCEEDED, "the deadline passed while waiting for a worker")
            else:
                await self._fail(state, code, message, retryable=code is ErrorCode.NO_WORKERS)
        return None

    async def _run_on(self, worker: WorkerHandle, batch: list[RequestState]) -> list[RequestState]:
        """One Generate call; returns the requests to try again elsewhere."""
        by_id = {s.id: s for s in batch}
        ended: set[str] = set()
        retry: list[RequestState] = []
        tokens = sum(s.remaining_tokens for s in batch)
        now = time.time()
        for state in batch:
            state.attempts += 1
            state.tokens_before_attempt = state.tokens
            state.tried.add(worker.worker_id)
            state.worker_id = worker.worker_id
            state.model = worker.info.model
            if state.dispatched_at is None:
                state.dispatched_at = now
                self._metrics.queue_seconds.labels(state.priority.value).observe(
                    max(0.0, now - state.request.created_at)
                )
            self.running_on[state.id] = worker
        deadlines = [s.request.deadline for s in batch if s.request.deadline]
        timeout = self._settings.batcher_rpc_timeout_s
        if deadlines:
            # A little past the latest deadline: the worker ends expired items itself and says so.
            timeout = min(timeout, max(0.5, max(deadlines) - now + 2.0))
        request = worker_pb2.GenerateRequest(items=[to_work_item(s) for s in batch], model=worker.info.model)
        worker.acquire(len(batch), tokens)
        self._worker_gauges(worker)
        self._metrics.batch_size.observe(len(batch))
        self._metrics.worker_batches.labels(worker.worker_id).inc()
        self._metrics.worker_requests.labels(worker.worker_id).inc(len(batch))
        # Several events per message where the worker serves it (fewer messages, same events).
        batched = worker.info.batched_events
        call = (worker.stub.GenerateBatched if batched else worker.stub.Generate)(request, timeout=timeout)
        watchdog = StreamWatchdog(call, lambda: self._answers(worker), stall_s=self._settings.batcher_stream_stall_s)
        ending: list[asyncio.Task[None]] = []
        try:
            async with watchdog:
                await self._read(call, batched, watchdog, by_id, ended, retry, ending)
        except grpc.aio.AioRpcError as exc:
            # Safe: the stream broke (worker died, network, timeout); every request it had not
            # ended is retried below on another worker, continuing after the delivered text.
            worker.failures += 1
            self._metrics.worker_failures.labels(worker.worker_id).inc()
            log.warning(
                "worker stream broke",
                extra={"worker": worker.worker_id, "code": str(exc.code()), "details": exc.details()},
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task itself is being cancelled (the batcher stops)
            # Safe: only the call was cancelled (by the watchdog because the worker stopped
            # answering, or by its channel closing); the requests it had not ended are retried below.
            worker.failures += 1
            self._metrics.worker_failures.labels(worker.worker_id).inc()
            if watchdog.stalled:
                self._metrics.worker_stalls.labels(worker.worker_id).inc()
            log.warning(
                "worker stream stalled; the worker does not answer" if watchdog.stalled else "worker stream cancelled",
                extra={"worker": worker.worker_id, "stall_s": self._settings.batcher_stream_stall_s},
            )
        finally:
            worker.release(len(batch), tokens)
            self._worker_gauges(worker)
            for state in batch:
                self.running_on.pop(state.id, None)
        try:
            await asyncio.gather(*ending)  # finals still being published (or judged)
        finally:
            for task in ending:  # only when this task is cancelled (the batcher stops): replayed
                task.cancel()
        retry += [s for s in batch if s.id not in ended and not s.done]
        if retry:
            self._metrics.retries.inc(len(retry))
        return retry

    async def _answers(self, worker: WorkerHandle) -> bool:
        """Whether `worker` answers an Info call within the probe timeout (the stall check)."""
        try:
            await worker.stub.Info(worker_pb2.InfoRequest(), timeout=self._settings.batcher_stall_probe_timeout_s)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            # Safe: no answer (or a refusal, or a channel already closing because the worker left
            # the registry) in time is exactly what the probe asks.
            return False
        return True

    async def _read(
        self,
        call: grpc.aio.UnaryStreamCall,
        batched: bool,
        watchdog: StreamWatchdog,
        by_id: dict[str, RequestState],
        ended: set[str],
        retry: list[RequestState],
        ending: list[asyncio.Task[None]],
    ) -> None:
        """Turn the call's events (`batched`: GenerateEvents messages, else one GenerateEvent per
        message) into replies until the stream ends. Each finished request is ended (judged first,
        if held in blocking mode, then published) on a task of its own (`ending`), so that neither
        the broker's acknowledgements nor the guardian's verdict hold up the other requests of the
        stream."""
        async for message in call:
            watchdog.saw_event()
            for event in message.events if batched else (message,):
                state = by_id.get(event.request_id)
                if state is None or event.request_id in ended:
                    continue  # Safe: an event for an id not in this batch, or after its end.
                with request_context(state.id):
                    kind = event.WhichOneof("event")
                    if kind == "delta":
                        await self._on_delta(state, event.delta)
                    elif kind == "finished":
                        ended.add(state.id)
                        # On a task of its own: the final reply and the result are awaited until
                        # the broker has them (only then may the offset move), and awaited here,
                        # one request after another, every later request of the stream waited for
                        # this one's round trips (and a held answer for its verdict). The
                        # request's deltas are already in the producer's queue, so its final
                        # still comes after them.
                        ending.append(asyncio.create_task(self._on_finished(state, event.finished)))
                    elif kind == "failed":
                        ended.add(state.id)
                        if not await self._on_failed(state, event.failed):
                            retry.append(state)

    def _worker_gauges(self, worker: WorkerHandle) -> None:
        self._metrics.worker_outstanding.labels(worker.worker_id).set(worker.outstanding_requests)
        self._metrics.worker_outstanding_tokens.labels(worker.worker_id).set(worker.outstanding_tokens)

    async def _on_delta(self, state: RequestState, delta: worker_pb2.TokenDelta) -> None:
        if state.cancelled:
            # Text after the cancellation: the Cancel reached the worker before the item did (it
            # was still on its way in the Generate call) or was lost. The item is there now, so
            # tell it once more, off this stream's loop; no more text leaves for this request.
            if not state.cancel_resent:
                state.cancel_resent = True
                task = asyncio.create_task(self.cancel_on_worker(state.id), name=f"cancel-{state.id}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        if state.first_token_at is None and (delta.tokens or delta.text):
            state.first_token_at = time.time()
            if state.dispatched_at is not None:
                self._metrics.ttft_seconds.observe(state.first_token_at - state.dispatched_at)
        state.text += delta.text
        state.tokens += delta.tokens
        # Only when asked for: a worker that sends them regardless must not make replies bigger.
        logprobs = logprobs_from_proto(delta.logprobs) if delta.logprobs and state.request.params.logprobs else ()
        prompt_logprobs: tuple[TokenLogprob, ...] = ()
        if delta.prompt_logprobs and state.request.params.prompt_logprobs is not None:
            if not state.prompt_logprobs_received:  # a worker that repeats them is not believed twice
                state.prompt_logprobs_received = True
                prompt_logprobs = logprobs_from_proto(delta.prompt_logprobs)
        if delta.HasField("prompt_text") and state.request.prompt_token_ids is not None:
            # The first worker's decoding is the one replied (a retry's worker sends it again).
            if state.decoded_prompt is None:
                state.decoded_prompt = delta.prompt_text[: MAX_TEXT_CHARS * 2]  # the records' bound
        token_ids: tuple[int, ...] = ()
        if state.request.params.return_token_ids:
            token_ids = token_ids_from_proto(delta.token_ids)
            if delta.prompt_token_ids and not state.worker_prompt_ids:
                # The first worker's, as for the decoding (a retry's worker has a continuation
                # and sends none).
                state.worker_prompt_ids = token_ids_from_proto(delta.prompt_token_ids)[:MAX_PROMPT_TOKEN_IDS]
        await self._publisher.delta(state, delta.text, logprobs, prompt_logprobs, token_ids)

    async def _on_finished(self, state: RequestState, finished: worker_pb2.Finished) -> None:
        state.prompt_tokens = finished.prompt_tokens or state.prompt_tokens
        # The worker's count: tokens that added no text (an end-of-sequence token) were never on a
        # delta, yet they were generated (and are counted, as vLLM and OpenAI count them).
        state.tokens = max(state.tokens, state.tokens_before_attempt + finished.completion_tokens)
        if finished.reason == worker_pb2.FINISH_REASON_CANCELLED or state.cancelled:
            # A request cancelled while its last tokens were on the way ends as cancelled too.
            await self._fail(state, ErrorCode.CANCELLED, f"cancelled: {state.cancelled or 'on the worker'}")
            return
        reason = _FINISH.get(finished.reason, FinishReason.STOP)
        if state.held:
            judged = await self._guard.judge(state.request, state.text)
            if judged.error is not None:
                await self._fail(state, judged.error, judged.message, retryable=judged.retryable)
                return
            await self._publisher.final(state, reason, reply_text=judged.text)
        else:
            await self._publisher.final(state, reason)
        self._finish(state, "ok")

    async def _on_failed(self, state: RequestState, failed: worker_pb2.Failed) -> bool:
        """Ends the request unless another worker may succeed; True if it ended."""
        if failed.code in _RETRYABLE and state.attempts < self._settings.batcher_max_attempts:
            log.info("retrying on another worker", extra={"code": int(failed.code), "reason": failed.message})
            return False
        await self._fail(
            state, _FAILURE.get(failed.code, ErrorCode.WORKER_FAILED), failed.message or "the worker failed",
            retryable=failed.code in _RETRYABLE,
        )
        return True

    async def _fail(self, state: RequestState, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        await self._publisher.error(state, code, message, retryable=retryable)
        self._finish(state, code.value)

    def _finish(self, state: RequestState, outcome: str) -> None:
        state.done = True
        self._metrics.requests.labels(state.priority.value, outcome).inc()
        self._release(state)
