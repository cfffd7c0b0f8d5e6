"""The simulated backend: no model, tokens at a configured rate, for pipeline and scale tests.

Each sequence is one asyncio task that sleeps on timers: the first token comes
`simulated_ttft_ms` after it starts running, then one token every 1/`simulated_tokens_per_s`
seconds. At most `worker_max_batch_size` sequences run at once; the rest wait in order. Token
``i`` is the text ``tok<i>`` (space separated, numbered on from a continuation), so output is
predictable. It honours max_new_tokens, stop strings, cancellation and deadlines like the real
engine, and everything it reports says it is simulated. No threads, no polling. Asked for log
probabilities, it reports each token as certain (log probability 0, token id its index) and as
the only alternative: the shape of real ones, for pipeline tests, with no model behind them. Token ``i`` has id ``i``
for `stop_token_ids`; it has no end-of-sequence token, so `ignore_eos` changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.worker.engine import (
    EngineInfo,
    EngineObserver,
    FailureCode,
    FinishReason,
    NullObserver,
    SequenceFailed,
    SequenceFinished,
    SequenceHandle,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    WorkItem,
)
from services.worker.prompt_encoding import EncodedPrompt
from services.worker.sequence_tasks import SequenceAbort, SequenceProgress, TaskPerSequenceEngine
from services.worker.settings import WorkerSettings
from services.worker.stop_strings import StopStringMatcher

__all__ = [
    "SIMULATED_MODEL_NAME",
    "SimulatedEngine",
    "simulated_logprob",
    "simulated_prompt_logprobs",
    "simulated_prompt_text",
    "simulated_prompt_token_ids",
    "simulated_token",
]

log = logging.getLogger(__name__)

#: The model name a simulated worker serves and reports.
SIMULATED_MODEL_NAME = "simulated"


def simulated_token(index: int) -> str:
    """Text of the `index`-th output token of a sequence (0-based)."""
    return f"tok{index}" if index == 0 else f" tok{index}"


def simulated_logprob(index: int, top: int) -> TokenLogprob:
    """The log probabilities reported for the `index`-th token: certain, its only alternative."""
    text = simulated_token(index)
    return TokenLogprob(index, text, 0.0, (TopLogprob(index, text, 0.0),)[:top])


def simulated_prompt_logprobs(item: WorkItem, top: int) -> tuple[TokenLogprob, ...]:
    """The prompt's log probabilities reported: one simulated token per word of the prompt (of the
    messages' contents for chat), id its position, each certain (rank 1) and its only alternative;
    the first has none (logprob 0, no alternatives, no rank), as a real engine reports it."""
    words = [w for m in item.messages for w in m.content.split()] if item.messages else _prompt_words(item)
    entries = []
    for index, word in enumerate(words):
        text = word if index == 0 else f" {word}"
        top_entries = () if index == 0 else (TopLogprob(index, text, 0.0),)[:top]
        entries.append(TokenLogprob(index, text, 0.0, top_entries, None if index == 0 else 1))
    return tuple(entries)


def simulated_prompt_text(token_ids: tuple[int, ...]) -> str:
    """A prompt of token ids as the simulated backend decodes it: token `i` is the word `tok<i>`."""
    return " ".join(f"tok{token}" for token in token_ids)


def _prompt_words(item: WorkItem) -> list[str]:
    """A raw prompt's simulated tokens: its words (token ids: their simulated decoding's)."""
    if item.prompt_token_ids:
        return simulated_prompt_text(item.prompt_token_ids).split()
    return item.prompt.split()


def simulated_prompt_token_ids(item: WorkItem) -> tuple[int, ...]:
    """A prompt's token ids as the simulated backend reports them (`return_token_ids`): a prompt of
    token ids as given; otherwise 0, 1, ...: as many as its usage counts (`_count_words`)."""
    if item.prompt_token_ids and not item.messages:
        return item.prompt_token_ids
    return tuple(range(_count_words(item)))


def _simulated_encoding(item: WorkItem) -> EncodedPrompt:
    """The prompt as the simulated backend "tokenizes" it, for the delta about it sent at
    admission (`EncodedPrompt.admission_delta`, as the real backends send it)."""
    decoded = simulated_prompt_text(item.prompt_token_ids) if item.prompt_token_ids and not item.messages else None
    return EncodedPrompt(list(simulated_prompt_token_ids(item)), item.remaining_tokens, decoded=decoded)


def _count_words(item: WorkItem) -> int:
    """Prompt length in simulated tokens: whitespace-separated words (a token id is one)."""
    words = sum(len(m.content.split()) + 1 for m in item.messages) if item.messages else len(_prompt_words(item))
    return max(1, words + len(item.continuation.split()))


class SimulatedEngine(TaskPerSequenceEngine):
    """Fake generation on asyncio timers."""

    def __init__(self, settings: WorkerSettings, observer: EngineObserver | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._observer: EngineObserver = observer or NullObserver()
        self._slots: asyncio.Semaphore | None = None
        self._started = False
        self._info = EngineInfo(
            model=SIMULATED_MODEL_NAME,
            backend="simulated",
            device="none",
            dtype="none",
            max_batch_size=settings.worker_max_batch_size,
            max_model_len=settings.worker_max_model_len,
            simulated=True,
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self._settings.worker_max_batch_size)
        self._started = True
        log.info(
            "simulated backend ready (no model: output is not a model's)",
            extra={
                "tokens_per_s": self._settings.simulated_tokens_per_s,
                "ttft_ms": self._settings.simulated_ttft_ms,
            },
        )

    async def stop(self) -> None:
        await self._stop_sequences()

    def _not_ready(self) -> str | None:
        return None if self._started else "the worker is still starting"

    def _new_progress(self, item: WorkItem) -> SequenceProgress:
        return SequenceProgress(prompt_tokens=_count_words(item))

    async def _sequence(self, handle: SequenceHandle, state: SequenceProgress) -> SequenceFinished:
        item = handle.item
        settings = self._settings
        budget = item.remaining_tokens
        if state.prompt_tokens + budget > settings.worker_max_model_len:
            raise SequenceAbort(
                SequenceFailed(
                    item.request_id,
                    FailureCode.INVALID_REQUEST,
                    f"the prompt has {state.prompt_tokens} tokens and up to {budget} more may be generated, "
                    f"beyond this worker's max_model_len of {settings.worker_max_model_len}",
                )
            )
        admission = _simulated_encoding(item).admission_delta(item)
        if admission is not None:
            handle.sink(admission)
        if budget == 0:
            return state.finished(handle, FinishReason.LENGTH)
        assert self._slots is not None
        self._waiting += 1
        try:
            await self._before_deadline(handle, state, self._slots.acquire(), check_flags=False)
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            return await self._emit_tokens(handle, state, budget)
        finally:
            self._running -= 1
            self._slots.release()

    async def _emit_tokens(self, handle: SequenceHandle, state: SequenceProgress, budget: int) -> SequenceFinished:
        item = handle.item
        settings = self._settings
        gap = 1.0 / settings.simulated_tokens_per_s
        stops = StopStringMatcher(item.params.stop)
        await self._before_deadline(handle, state, asyncio.sleep(settings.simulated_ttft_ms / 1000.0))
        first_index = item.continuation_tokens
        # Of the tokens not yet reported: they wait with their text, as in the real engine.
        logprobs: list[TokenLogprob] = []
        token_ids: list[int] | None = [] if item.params.return_token_ids else None
        while True:
            token_at = time.monotonic()
            state.generated += 1
            if state.generated == 1:
                state.ttft_ms = handle.elapsed_ms()
                self._observer.first_token(state.ttft_ms / 1000.0)
            self._observer.tokens(1)
            index = first_index + state.generated - 1
            # Token `index` has id `index`: a stop token id ends the sequence there, as the real
            # engine's do (no text), once `min_tokens` tokens came before it.
            ends_here = index in item.params.stop_token_ids and index >= item.params.min_tokens
            # Stop strings are looked for once min_tokens tokens exist, as vLLM does.
            text = "" if ends_here else stops.feed(simulated_token(index), match=index >= item.params.min_tokens)
            if item.params.logprobs is not None:
                logprobs.append(simulated_logprob(index, item.params.logprobs))
            if token_ids is not None:
                token_ids.append(index)
            last = ends_here or stops.stopped or state.generated >= budget
            if last and not stops.stopped:
                text += stops.flush()
            prompt_logprobs: tuple[TokenLogprob, ...] = ()
            if state.generated == 1 and item.params.prompt_logprobs is not None:
                prompt_logprobs = simulated_prompt_logprobs(item, item.params.prompt_logprobs)
            if text or (last and (logprobs or token_ids)) or prompt_logprobs:
                unreported = state.generated - state.reported
                ids = () if token_ids is None else tuple(token_ids)
                handle.sink(TextDelta(item.request_id, text, unreported, tuple(logprobs), prompt_logprobs, None, ids))
                state.reported = state.generated
                logprobs.clear()
                if token_ids is not None:
                    token_ids.clear()
            if last:
                reason = FinishReason.STOP if stops.stopped or ends_here else FinishReason.LENGTH
                return state.finished(handle, reason)
            await self._before_deadline(handle, state, asyncio.sleep(gap))
            self._observer.decode_step(self._running, time.monotonic() - token_at)

    async def _before_deadline(
        self, handle: SequenceHandle, state: SequenceProgress, waiting: object, *, check_flags: bool = True
    ) -> None:
        """Await `waiting`, but fail the sequence if its deadline comes first. `check_flags=False`
        when `waiting` acquires a slot: the caller must release it before stopping."""
        deadline = handle.item.deadline_unix
        if deadline is None:
            await waiting  # type: ignore[misc]
        else:
            try:
                await asyncio.wait_for(waiting, timeout=max(0.0, deadline - time.time()))  # type: ignore[arg-type]
            except TimeoutError:
                # Safe: the deadline passed; the sequence ends with DEADLINE_EXCEEDED right here.
                raise SequenceAbort(
                    SequenceFailed(
                        handle.request_id,
                        FailureCode.DEADLINE_EXCEEDED,
                        f"the deadline passed after {state.generated} generated tokens",
                    )
                ) from None
        if check_flags and (handle.cancelled or handle.abort is not None):
            # wait_for (Python 3.11) can swallow a cancellation that races with completion.
            raise asyncio.CancelledError
