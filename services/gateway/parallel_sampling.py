"""Several choices for one request (OpenAI's `n`, and the legacy completions' list of prompts), as
vLLM makes them (`vllm/v1/engine/parallel_sampling.py`, and `serving_completion.py` for a list of
prompts): the request fans out into independent requests, and their answers are gathered into the
one answer the client asked for.

* **Children.** Child `i` is the request itself with id `<request id>.<i>` (distinct, within the
  record id pattern and its 128 characters: the gateway's ids have 45 at most with `n` up to 128)
  and, when the request has a seed, seed `seed + i` (folded into 0..2^63-1 as every seed is), so
  that a seeded request repeats all of its choices and no two choices share a sample; without a
  seed each child draws its own. With temperature 0 every choice is the same greedy answer (OpenAI
  and vLLM do the same). Each child is a whole request for the batchers and workers: it is queued,
  batched, cancelled and answered on its own (only `n` = 1 requests exist in the cluster).
* **Several prompts.** A completion request with a list of prompts makes `n` choices for each:
  choice `i * n + j` is choice `j` of prompt `i` (OpenAI's and vLLM's numbering), with id
  `<request id>.<i * n + j>` and seed `seed + j`, so that every prompt's choices are those the same
  request with that prompt alone would make.
* **Merging.** :class:`ChoiceStreams` interleaves the children's events as they come, each tagged
  with its choice's index; a child's failure (an exception from its event stream) is raised to the
  reader, and closing the merge closes every child's stream, which cancels the unfinished ones in
  the cluster. One task per child reads its stream: only requests with `n` > 1 pay for them.
* **Usage.** Each prompt is counted once (its `n` children share it) and the completion tokens of
  every choice are summed, as vLLM reports them (:func:`summed_usage`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from shared.records import SEED_MODULUS, GenerationParams, GenerationRequest, ReplyEvent, TokenLogprob, Usage

__all__ = [
    "ChoiceEvent",
    "ChoiceGatherer",
    "ChoiceResult",
    "ChoiceStreams",
    "child_id",
    "child_requests",
    "summed_usage",
]


def child_id(request_id: str, index: int) -> str:
    """The id of choice `index` of request `request_id` (its events, results and Cancel use it)."""
    return f"{request_id}.{index}"


def child_requests(
    request: GenerationRequest, n: int, prompts: Sequence[str | tuple[int, ...]] = ()
) -> tuple[GenerationRequest, ...]:
    """The requests that make the choices of `request`: `n` of them, or `n` for each of `prompts`
    when given (a completion request's list of prompts, texts or token ids; the request's own
    prompt is then ignored). See the module docstring."""
    seed = request.params.seed
    children = []
    for prompt_index, prompt in enumerate(prompts or (None,)):
        if prompt is None:
            base = request
        elif isinstance(prompt, str):
            base = request.model_copy(update={"prompt": prompt, "prompt_token_ids": None})
        else:
            base = request.model_copy(update={"prompt": None, "prompt_token_ids": prompt})
        for index in range(n):
            params = request.params
            if seed is not None:
                params = params.model_copy(update={"seed": (seed + index) % SEED_MODULUS})
            choice = prompt_index * n + index
            children.append(base.model_copy(update={"id": child_id(request.id, choice), "params": params}))
    return tuple(children)


@dataclass(frozen=True, slots=True)
class ChoiceEvent:
    """One event of one choice."""

    index: int
    """Which choice (0 to the number of choices - 1)."""
    event: ReplyEvent
    """The child request's event."""


@dataclass(frozen=True, slots=True)
class ChoiceResult:
    """A finished choice of a whole (not streamed) answer."""

    index: int
    """Which choice (0 to the number of choices - 1)."""
    final: ReplyEvent
    """Its final event (text, finish reason, usage)."""
    logprobs: Sequence[TokenLogprob] | None = None
    """Its log probabilities, gathered from its deltas; None when the request did not ask for them."""
    prompt_logprobs: Sequence[TokenLogprob] | None = None
    """Its prompt's log probabilities (`echo` with `logprobs`), gathered from its deltas; None when
    the request did not ask for them."""
    echo: str = ""
    """Text put before its text in the answer: its prompt, for a completion request with `echo`."""
    prompt_text: str | None = None
    """A prompt of token ids as the worker decoded it (from its deltas); None for the others."""
    echo_logprobs: Sequence[TokenLogprob] = ()
    """The prompt's entries that `logprobs` lists before the answer's (`echo` with `logprobs`),
    with as many alternatives as the request's `logprobs` asks."""
    token_ids: Sequence[int] | None = None
    """Its generated tokens' ids, gathered from its deltas; None when the request did not ask for
    them (`return_token_ids`)."""
    prompt_token_ids: Sequence[int] | None = None
    """Its prompt's token ids after the chat template, from its deltas; None when the request did
    not ask for them."""


class ChoiceGatherer:
    """What one choice's delta events carry besides its text, gathered for its whole answer
    (`ChoiceResult`): the log probabilities, the prompt's, and the token ids the request asked for,
    and the decoding of a prompt of token ids."""

    __slots__ = ("_logprobs", "_prompt_logprobs", "_prompt_text", "_prompt_token_ids", "_token_ids")

    def __init__(self, params: GenerationParams) -> None:
        self._logprobs: list[TokenLogprob] | None = [] if params.logprobs else None
        self._prompt_logprobs: list[TokenLogprob] | None = [] if params.prompt_logprobs is not None else None
        self._token_ids: list[int] | None = [] if params.return_token_ids else None
        self._prompt_token_ids: tuple[int, ...] | None = () if params.return_token_ids else None
        self._prompt_text: str | None = None

    def add(self, event: ReplyEvent) -> None:
        """Take what a delta event carries (a worker sends nothing unasked; the batcher drops it)."""
        if self._logprobs is not None:
            self._logprobs.extend(event.logprobs)
        if self._prompt_logprobs is not None:
            self._prompt_logprobs.extend(event.prompt_logprobs)
        if self._token_ids is not None:
            self._token_ids.extend(event.token_ids)
        if self._prompt_token_ids is not None and event.prompt_token_ids:
            self._prompt_token_ids = event.prompt_token_ids
        if event.prompt_text is not None:
            self._prompt_text = event.prompt_text

    def result(self, index: int, final: ReplyEvent) -> ChoiceResult:
        """The finished choice `index`, whose final event is `final`."""
        return ChoiceResult(
            index,
            final,
            self._logprobs,
            self._prompt_logprobs,
            prompt_text=self._prompt_text,
            token_ids=self._token_ids,
            prompt_token_ids=self._prompt_token_ids,
        )


@dataclass(frozen=True, slots=True)
class _ChoiceFailed:
    """A child's event stream raised: the reader raises it in turn."""

    index: int
    error: Exception


def summed_usage(finals: Mapping[int, ReplyEvent], n: int) -> Usage:
    """The usage of an answer made of these choices (by index, `n` per prompt): each prompt once
    (the largest count among its choices, should workers disagree), the completion tokens of every
    choice summed."""
    prompt_tokens: dict[int, int] = {}
    completion_tokens = 0
    for index, final in finals.items():
        if final.usage is None:
            continue
        prompt = index // n
        prompt_tokens[prompt] = max(prompt_tokens.get(prompt, 0), final.usage.prompt_tokens)
        completion_tokens += final.usage.completion_tokens
    return Usage(prompt_tokens=sum(prompt_tokens.values()), completion_tokens=completion_tokens)


class ChoiceStreams:
    """The event streams of a request's choices, merged in arrival order (see the module docstring).

    Nothing is read before the first :meth:`next` (as an engine client's stream submits its request
    only when first read); :meth:`aclose` must be called however the reader ends."""

    def __init__(self, streams: Sequence[AsyncIterator[ReplyEvent]]) -> None:
        self._streams = tuple(streams)
        self._queue: asyncio.Queue[ChoiceEvent | _ChoiceFailed] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []
        self._closed = False

    def __len__(self) -> int:
        return len(self._streams)

    async def next(self) -> ChoiceEvent:
        """The next event of any choice; raises what a choice's stream raised."""
        if not self._readers and not self._closed:
            self._readers = [
                asyncio.ensure_future(self._read(index, stream)) for index, stream in enumerate(self._streams)
            ]
        item = await self._queue.get()
        if isinstance(item, _ChoiceFailed):
            raise item.error
        return item

    async def _read(self, index: int, stream: AsyncIterator[ReplyEvent]) -> None:
        """Move one choice's events to the queue, until its terminal event or failure."""
        try:
            async for event in stream:
                self._queue.put_nowait(ChoiceEvent(index, event))
                if event.terminal:
                    return
            # An engine client's stream always ends with a terminal event; one that does not
            # would leave the reader waiting for ever.
            self._queue.put_nowait(_ChoiceFailed(index, RuntimeError(f"choice {index} ended without a final event")))
        except Exception as exc:
            # Safe: the failure is handed to the reader, who answers the client with it.
            self._queue.put_nowait(_ChoiceFailed(index, exc))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        """Stop reading every choice: a stream closed before its terminal event cancels its request
        in the cluster. Waits until every reader is down. Idempotent."""
        self._closed = True
        for reader in self._readers:
            reader.cancel()
        if self._readers:
            await asyncio.gather(*self._readers, return_exceptions=True)
        else:
            # Never read: nothing was submitted; the streams are closed all the same.
            for stream in self._streams:
                await stream.aclose()  # type: ignore[attr-defined]
