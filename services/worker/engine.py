"""What every backend of the worker provides, and the typed objects that cross its boundary.

The gRPC layer converts protobuf messages to these types at the edge (``proto_convert``), submits
:class:`WorkItem` objects to an :class:`Engine`, and receives :class:`EngineEvent` objects through
the sink it gave with each item. Every submitted item ends with exactly one :class:`SequenceFinished`
or :class:`SequenceFailed`; before that it may produce any number of :class:`TextDelta` events.

Sinks are always called on the event loop that submitted the item (engines that compute on their
own thread hand events over with ``call_soon_threadsafe``), so a sink may touch asyncio objects.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

__all__ = [
    "ChatTurn",
    "Engine",
    "EngineEvent",
    "EngineFailedError",
    "EngineInfo",
    "EngineObserver",
    "EventSink",
    "FailureCode",
    "FinishReason",
    "NullObserver",
    "SamplingParams",
    "SequenceFailed",
    "SequenceFinished",
    "SequenceHandle",
    "TextDelta",
    "TokenLogprob",
    "TopLogprob",
    "WorkItem",
    "deliver_from_thread",
]

log = logging.getLogger(__name__)


class FinishReason(Enum):
    """Why a sequence finished normally."""

    STOP = "stop"
    """End-of-sequence token or a stop string."""
    LENGTH = "length"
    """max_new_tokens (or the model length) reached."""
    CANCELLED = "cancelled"
    """Cancelled by Cancel or by the client closing the RPC."""


class FailureCode(Enum):
    """Why a sequence failed."""

    INVALID_REQUEST = "invalid_request"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    MODEL_NOT_FOUND = "model_not_found"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens for one sequence (validated by ``proto_convert``)."""

    max_new_tokens: int = 16
    """Most tokens this request may have in total, the continuation's included."""
    temperature: float = 0.0
    """0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]."""
    top_k: int = 0
    """0 disables."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; never part of the output."""
    seed: int | None = None
    """Per-sequence sampling seed; None draws a random one."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty; 1 disables."""
    presence_penalty: float = 0.0
    """OpenAI's, over the generated tokens: subtracted once from each one's logit; 0 disables."""
    frequency_penalty: float = 0.0
    """OpenAI's, over the generated tokens: subtracted per occurrence; 0 disables."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits before every pick, ids in ascending order."""
    logprobs: int | None = None
    """None: no log probabilities. Otherwise each generated token's log probability and those of
    this many most likely tokens (0-20) travel on its TextDelta: the model's own distribution,
    before the logit bias, penalties, temperature and filters (vLLM's `raw_logprobs`)."""
    ignore_eos: bool = False
    """Generate past the end-of-sequence token (stop strings and `stop_token_ids` still end it)."""
    min_tokens: int = 0
    """The end-of-sequence token and `stop_token_ids` cannot be picked before this many tokens
    (the continuation's count, as for max_new_tokens)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation as the end-of-sequence token does (no text)."""
    prompt_logprobs: int | None = None
    """None: none. Otherwise every prompt token's log probability given the ones before it and
    those of this many most likely tokens at each prompt position (0-20), on the sequence's first
    TextDelta (vLLM's `prompt_logprobs`; the model's own distribution, as `logprobs`)."""
    return_token_ids: bool = False
    """Send token ids (vLLM's `return_token_ids`): the prompt's, after the chat template, on a
    delta at admission (`TextDelta.prompt_token_ids`; not for an item with a continuation, whose
    prompt an earlier attempt reported), and each generated token's on the delta that carries it
    (`TextDelta.token_ids`, the end-of-sequence token's included)."""

    @property
    def penalises_output(self) -> bool:
        """Whether the presence or frequency penalty needs the tokens generated so far."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request to generate, as the engine sees it."""

    request_id: str
    prompt: str = ""
    """Raw prompt (used when `messages` is empty)."""
    messages: tuple[ChatTurn, ...] = ()
    """Chat turns; the engine applies the model's chat template."""
    params: SamplingParams = SamplingParams()
    deadline_unix: float | None = None
    """Absolute Unix time after which it fails with DEADLINE_EXCEEDED."""
    continuation: str = ""
    """Text an earlier attempt already delivered: appended to the prompt, never re-sent."""
    continuation_tokens: int = 0
    """Tokens of `continuation`; they count against max_new_tokens."""
    prompt_token_ids: tuple[int, ...] = ()
    """Raw prompt as token ids, used as they are (used when `messages` is empty and this is not,
    instead of `prompt`); the engine sends their decoding on a delta (`TextDelta.prompt_text`)."""

    @property
    def remaining_tokens(self) -> int:
        """Tokens this worker may still generate."""
        return max(0, self.params.max_new_tokens - self.continuation_tokens)

    @property
    def remaining_min_tokens(self) -> int:
        """Tokens this worker must generate before it may end the sequence with an end-of-sequence
        token or a `stop_token_ids` token."""
        return max(0, self.params.min_tokens - self.continuation_tokens)


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """A token that could stand at a position, with its log probability."""

    token_id: int
    token: str
    """The token's text on its own (U+FFFD where it is part of a multi-byte character)."""
    logprob: float
    """Natural log, clamped at -9999 (no -inf on the wire)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log probability, and the most likely tokens at its position."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()
    """`SamplingParams.logprobs` most likely tokens, most likely first."""
    rank: int | None = None
    """The token's 1-based rank in the whole vocabulary at its position (1: the most likely);
    given for the prompt's tokens (vLLM's `Logprob.rank`), None where not computed."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output text of one sequence."""

    request_id: str
    text: str
    tokens: int
    """Tokens generated since the previous delta (text may lag tokens by a partial character)."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """When the item asked for them: one entry per token this delta covers, in order."""
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    """When the item asked for them, on its first delta only: one entry per prompt token (after
    the chat template), in order; the first has none (nothing comes before it): logprob 0, no `top`."""
    prompt_text: str | None = None
    """When the item's prompt came as token ids: their decoding, on a delta of its own (no text,
    no tokens) sent as soon as the item is accepted."""
    token_ids: tuple[int, ...] = ()
    """When the item asked for them (`return_token_ids`): the ids of the tokens this delta
    covers, in order (as many as `tokens`)."""
    prompt_token_ids: tuple[int, ...] = ()
    """When the item asked for them: the prompt's token ids after the chat template, on the delta
    of its own sent as soon as the item is accepted (with `prompt_text`, if any)."""


@dataclass(frozen=True, slots=True)
class SequenceFinished:
    """A sequence ended normally; nothing follows for it."""

    request_id: str
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    """Receipt to first token (0 when no token was generated)."""
    total_ms: float
    """Receipt to the end."""


@dataclass(frozen=True, slots=True)
class SequenceFailed:
    """A sequence failed; nothing follows for it."""

    request_id: str
    code: FailureCode
    message: str


EngineEvent = TextDelta | SequenceFinished | SequenceFailed
EventSink = Callable[[EngineEvent], None]

_handle_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class SequenceHandle:
    """One submitted item: how the engine tracks it and how the caller cancels it.

    Flags written by the event loop (`cancelled`) and read by an engine thread are plain
    attributes: a bool write is atomic under the GIL and the engine checks it every step.
    """

    item: WorkItem
    sink: EventSink
    loop: asyncio.AbstractEventLoop
    received_monotonic: float = field(default_factory=time.monotonic)
    key: int = field(default_factory=lambda: next(_handle_ids))
    cancelled: bool = False
    abort: SequenceFailed | None = None
    """Set to fail the sequence at the engine's next step (drain timeout, shutdown)."""
    ended: bool = False

    @property
    def request_id(self) -> str:
        return self.item.request_id

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.received_monotonic) * 1000.0

    def expired(self, now_unix: float | None = None) -> bool:
        deadline = self.item.deadline_unix
        return deadline is not None and (now_unix if now_unix is not None else time.time()) >= deadline


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an engine serves (for Info, the registry and metric labels)."""

    model: str
    """Served model name."""
    backend: str
    device: str
    dtype: str
    max_batch_size: int
    max_model_len: int
    simulated: bool


class EngineObserver(Protocol):
    """Receives engine-side measurements (metrics); may be called from an engine thread."""

    def first_token(self, ttft_s: float) -> None:
        """A sequence produced its first token `ttft_s` after it was received."""

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        """Every running sequence got one more token in `duration_s` (the inter-token latency)."""

    def tokens(self, count: int) -> None:
        """`count` more output tokens were generated."""

    def kv_cache(self, tokens: int, nbytes: int) -> None:
        """The KV cache now holds `tokens` token slots (padding included) in `nbytes` bytes."""

    def prefix_reused(self, tokens: int) -> None:
        """`tokens` prompt tokens were not run: their keys and values came from a shared prefix."""


class NullObserver:
    """Observes nothing."""

    def first_token(self, ttft_s: float) -> None:
        pass

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        pass

    def tokens(self, count: int) -> None:
        pass

    def kv_cache(self, tokens: int, nbytes: int) -> None:
        pass

    def prefix_reused(self, tokens: int) -> None:
        pass


class EngineFailedError(RuntimeError):
    """The engine can no longer generate (an error its own loop could not recover from): every
    sequence it held failed with INTERNAL, it refuses new items, and the worker process stops
    with exit code 1 so that its supervisor (`lgc up`, Kubernetes) restarts it."""


class Engine(ABC):
    """A backend that generates for submitted items and reports events to their sinks."""

    on_failure: Callable[[str], None] | None = None
    """Called once, from any thread, when the engine fails for good (`EngineFailedError`); the
    worker service sets it. None: nobody is told (tests of an engine alone)."""

    @property
    def failure(self) -> str | None:
        """Why the engine failed for good, or None while it can generate."""
        return None

    @property
    @abstractmethod
    def info(self) -> EngineInfo: ...

    @property
    @abstractmethod
    def running(self) -> int:
        """Sequences generating now."""

    @property
    @abstractmethod
    def waiting(self) -> int:
        """Sequences accepted and not yet generating."""

    @abstractmethod
    async def start(self) -> None:
        """Load the model (off the event loop) and start generating; raises if it cannot."""

    @abstractmethod
    async def stop(self) -> None:
        """Fail whatever is left with OVERLOADED and release the model."""

    @abstractmethod
    def submit(self, item: WorkItem, sink: EventSink) -> SequenceHandle:
        """Accept `item`; its events go to `sink` on the calling event loop. Never raises for a
        bad item: it ends with a SequenceFailed event instead."""

    @abstractmethod
    def cancel(self, handle: SequenceHandle) -> bool:
        """Stop one sequence (it ends with FinishReason.CANCELLED); False if it already ended."""

    @abstractmethod
    def active(self) -> Iterable[SequenceHandle]:
        """Sequences accepted and not yet ended."""

    def cancel_requests(self, request_ids: Iterable[str]) -> int:
        """Cancel every active sequence with one of these ids; returns how many."""
        wanted = set(request_ids)
        return sum(1 for h in list(self.active()) if h.request_id in wanted and self.cancel(h))

    def abort_all(self, code: FailureCode, message: str) -> int:
        """Fail every active sequence with `code` at the next step; returns how many."""
        count = 0
        for handle in list(self.active()):
            if not handle.ended and handle.abort is None:
                handle.abort = SequenceFailed(handle.request_id, code, message)
                count += 1
        self._wake()
        return count

    def _wake(self) -> None:
        """Make the engine look at its sequences now (engines that sleep override this)."""


def deliver_from_thread(batch: Iterable[tuple[SequenceHandle, EngineEvent]]) -> None:
    """From an engine thread: hand events to their sinks on their event loops, one
    ``call_soon_threadsafe`` per loop, in order."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[EventSink, EngineEvent]]] = {}
    for handle, event in batch:
        by_loop.setdefault(handle.loop, []).append((handle.sink, event))
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_run_sinks, events)
        except RuntimeError:
            # Safe: the loop is closed, so nobody is listening for these events any more.
            log.debug("dropping events for a closed event loop", extra={"events": len(events)})


def _run_sinks(events: list[tuple[EventSink, EngineEvent]]) -> None:
    for sink, event in events:
        try:
            sink(event)
        except Exception:
            # Safe: one broken sink must not stop the events of other sequences; the sink's owner
            # logs the failure and its RPC fails on its own.
            log.exception("an event sink failed", extra={"request_id": event.request_id})
