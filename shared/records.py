"""The records that travel on Kafka, defined once.

Every record is versioned JSON with a ``v`` field. Rules for changing them (as vLLM does for its
engine structs): a new field goes last and has a default, so that older producers stay valid; a field
is never renamed or retyped in place; a breaking change bumps ``v``. Unknown fields are ignored
rather than refused, so that a newer producer does not dead-letter on an older consumer.

JSON Schemas for all of them are exported to ``schemas/`` by ``python -m shared.schema_export``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "RECORD_TYPES",
    "SCHEMA_VERSION",
    "CachePolicy",
    "CacheStatus",
    "Cancel",
    "CategoryScore",
    "ChatMessage",
    "ErrorCode",
    "ErrorInfo",
    "FinishReason",
    "GenerationParams",
    "GenerationRequest",
    "GenerationResult",
    "GuardMode",
    "GuardianVerdict",
    "MetricsSnapshot",
    "Priority",
    "Record",
    "ReplyEvent",
    "ReplyKind",
    "ScalingDecision",
    "Timings",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "VerdictAction",
]

#: The record format version this code writes and the highest it reads.
SCHEMA_VERSION = 1

#: Upper bounds that keep one record well under the default 1 MiB Kafka record size.
MAX_ID_LENGTH = 128
MAX_TEXT_CHARS = 200_000
MAX_MESSAGES = 256
MAX_STOP_SEQUENCES = 4
MAX_LOGIT_BIAS = 300
"""Most tokens one request's `logit_bias` may name (OpenAI's limit)."""
MAX_TOKEN_ID = 2**31 - 1
"""Largest token id a record may carry (the protos' uint32 holds it; no vocabulary comes near)."""
SEED_MODULUS = 2**63
"""Seeds are integers in [0, SEED_MODULUS); a larger one from a client is folded into it."""
MAX_STOP_TOKEN_IDS = 64
"""Most token ids one request's `stop_token_ids` may name."""
MAX_TOP_LOGPROBS = 20
"""Most alternatives per position a request may ask log probabilities of (OpenAI's and vLLM's
default limit)."""
MAX_PROMPT_TOKEN_IDS = 32_768
"""Most token ids one prompt given as ids may have (a record of about 200 kB; no served model's
context comes near)."""
MAX_TOKEN_CHARS = 1_024
"""Longest text of one token a record may carry (no real vocabulary comes near)."""
MIN_LOGPROB = -9999.0
"""Log probabilities are clamped to this (JSON has no -inf; vLLM's OpenAI server does the same)."""


_TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
"""A token id of the served model."""
_LogitBias = Annotated[float, Field(ge=-100.0, le=100.0)]
"""What `logit_bias` adds to one token's logit."""


def now() -> float:
    """Wall-clock time as Unix seconds, the time base of every record."""
    return time.time()


RequestId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9._:-]+$")]
TenantName = Annotated[str, Field(min_length=1, max_length=128)]


class Record(BaseModel):
    """Base of every Kafka record: versioned, immutable, tolerant of unknown fields."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    v: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    """Record format version; a consumer refuses (dead-letters) versions newer than it knows."""

    def to_bytes(self) -> bytes:
        """The record as compact UTF-8 JSON, the form written to Kafka."""
        return self.model_dump_json(exclude_none=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str) -> Self:
        """Parse and validate; raises ``pydantic.ValidationError`` on anything malformed."""
        return cls.model_validate_json(data)


class Priority(StrEnum):
    """Scheduling class; each has its own request topic."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class GuardMode(StrEnum):
    """How the guardian treats a request's answer."""

    OFF = "off"
    """Not evaluated."""
    ASYNC = "async"
    """Evaluated after the answer is delivered (the default)."""
    BLOCKING = "blocking"
    """The gateway waits for the verdict before answering (non-streaming requests only)."""


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    """Who said it."""
    content: str = Field(max_length=MAX_TEXT_CHARS)
    """What was said (plain text)."""


class GenerationParams(BaseModel):
    """Sampling parameters; the batcher groups requests whose parameters are equal."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    max_new_tokens: int = Field(256, ge=1, le=32_768)
    """Most tokens to generate."""
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """0 means greedy decoding."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    top_k: int = Field(0, ge=0, le=100_000)
    """Sample among the k most likely tokens; 0 disables."""
    stop: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = Field((), max_length=MAX_STOP_SEQUENCES)
    """Generation ends before any of these strings; they are not part of the output."""
    seed: int | None = Field(None, ge=0, le=SEED_MODULUS - 1)
    """Seed for sampling; with the same seed and parameters the same worker repeats itself."""
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    """>1 discourages repeating tokens (CTRL-style), 1 disables."""
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from the logit of every token the answer already holds (generated
    tokens only, not the prompt's); > 0 favours new tokens, 0 disables."""
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from a token's logit once per time it occurs in the answer so far;
    > 0 discourages repeating the same words, 0 disables."""
    logit_bias: dict[_TokenId, _LogitBias] = Field(default_factory=dict, max_length=MAX_LOGIT_BIAS)
    """OpenAI's: added to these token ids' logits (the model's own ids; JSON keys are their
    decimal strings) before every pick; -100 in effect bans a token, 100 forces it. The worker
    refuses ids beyond its model's vocabulary."""
    logprobs: bool = False
    """Return the log probability of every generated token (on the reply's delta events). As
    vLLM's default (`raw_logprobs`): the model's own distribution, before the logit bias,
    penalties, temperature and top-k/top-p change it."""
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)
    """With `logprobs`: also the log probabilities of this many most likely tokens at each
    position."""
    ignore_eos: bool = False
    """vLLM's extension: generate past the end-of-sequence token, up to `max_new_tokens` (what
    benchmarks use for answers of a fixed length); `stop` and `stop_token_ids` still end it."""
    min_tokens: int = Field(0, ge=0, le=32_768)
    """vLLM's extension: the end-of-sequence token and `stop_token_ids` cannot be picked before
    this many tokens; at most `max_new_tokens`. 0 disables."""
    stop_token_ids: tuple[_TokenId, ...] = Field((), max_length=MAX_STOP_TOKEN_IDS)
    """vLLM's extension: token ids that end generation as the end-of-sequence token does (finish
    reason `stop`; their text is not part of the answer)."""
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """vLLM's `prompt_logprobs`: None for none; otherwise the log probability of every prompt
    token given the ones before it, and of this many most likely tokens at each prompt position
    (on the reply's delta events, `ReplyEvent.prompt_logprobs`). The model's own distribution, as
    `logprobs`. What a completion request with `echo` and `logprobs` asks for."""
    return_token_ids: bool = False
    """vLLM's `return_token_ids`: the reply's delta events carry the prompt's token ids after the
    chat template (`ReplyEvent.prompt_token_ids`, once) and each generated token's
    (`ReplyEvent.token_ids`, the end-of-sequence token's included)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs'")
        if self.min_tokens > self.max_new_tokens:
            raise ValueError("'min_tokens' must not exceed 'max_new_tokens'")
        return self

    def group_key(self) -> tuple[object, ...]:
        """Parameters that must be equal for two requests to share a batch (all but the lengths,
        the ways to stop and the log probabilities asked for, which each sequence has on its own)."""
        return (
            self.temperature, self.top_p, self.top_k, self.seed, self.repetition_penalty,
            self.presence_penalty, self.frequency_penalty, tuple(sorted(self.logit_bias.items())),
        )


class CachePolicy(BaseModel):
    """Whether the gateway's caches may answer this request and store its answer."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    read: bool = True
    """May be answered from the exact or semantic cache."""
    write: bool = True
    """Its answer may be stored."""


class GenerationRequest(Record):
    """A request to generate: written to `<prefix>.requests.<priority>`, keyed by `id`."""

    id: RequestId
    """Unique request id; replies, results, cancellations and verdicts are keyed by it."""
    priority: Priority = Priority.NORMAL
    """Scheduling class (must match the topic it is written to; the topic wins)."""
    tenant: TenantName = "default"
    """Who asked; caches and limits are scoped by it."""
    model: str = Field(min_length=1, max_length=256)
    """Model name as workers report it."""
    messages: tuple[ChatMessage, ...] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    """Chat turns (the worker applies the model's chat template). Exactly one of messages/prompt."""
    prompt: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    """Raw completion prompt. Exactly one of messages/prompt."""
    params: GenerationParams = GenerationParams()
    """Sampling parameters."""
    stream: bool = False
    """Send token deltas to `reply_to` as they are made (a final event is always sent)."""
    reply_to: str | None = Field(None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """Topic for ReplyEvents (a gateway instance's reply topic); none: only `results` is written."""
    deadline: float | None = Field(None, gt=0)
    """Absolute Unix time after which the request is abandoned with `deadline_exceeded`."""
    cache: CachePolicy = CachePolicy()
    """Cache preferences."""
    guard: GuardMode = GuardMode.ASYNC
    """Guardian preference."""
    created_at: float = Field(default_factory=now, gt=0)
    """When the request was made (Unix seconds)."""
    prompt_token_ids: tuple[_TokenId, ...] | None = Field(None, min_length=1, max_length=MAX_PROMPT_TOKEN_IDS)
    """Raw completion prompt as token ids of the model's vocabulary, used as they are (no special
    tokens added; vLLM's token prompts). Only the workers have the tokenizer: the worker's
    decoding of it comes back on the replies (`ReplyEvent.prompt_text`). Exactly one of
    messages/prompt/prompt_token_ids."""

    @model_validator(mode="after")
    def _exactly_one_input(self) -> Self:
        given = (self.messages is not None) + (self.prompt is not None) + (self.prompt_token_ids is not None)
        if given != 1:
            raise ValueError("exactly one of 'messages', 'prompt' and 'prompt_token_ids' must be given")
        return self

    def prompt_as_text(self) -> str:
        """The prompt as one text, for results, logs and the guardian: `prompt`, or the chat turns
        as `role: content` lines; empty for a prompt of token ids (nothing outside the workers can
        decode them)."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages or ())

    def expired(self, at: float | None = None) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and (at if at is not None else now()) >= self.deadline


class ErrorCode(StrEnum):
    """Why a request ended without a result."""

    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    OVERLOADED = "overloaded"
    INVALID_REQUEST = "invalid_request"
    MODEL_NOT_FOUND = "model_not_found"
    WORKER_FAILED = "worker_failed"
    NO_WORKERS = "no_workers"
    INTERNAL = "internal"
    CONTENT_FILTER = "content_filter"
    """The guardian blocked the answer of a blocking-mode request (nothing of it was sent)."""
    GUARDIAN_UNAVAILABLE = "guardian_unavailable"
    """A blocking-mode answer could not be judged in time, so it was not sent (fail closed)."""


class ErrorInfo(BaseModel):
    """An explicit failure with a reason."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    code: ErrorCode
    """Machine-readable reason."""
    message: str = Field(max_length=4_096)
    """Human-readable explanation."""
    retryable: bool = False
    """Whether sending the same request again may succeed."""


class FinishReason(StrEnum):
    """Why generation stopped (OpenAI's vocabulary)."""

    STOP = "stop"
    """End-of-sequence token or a stop string."""
    LENGTH = "length"
    """`max_new_tokens` reached."""
    CANCELLED = "cancelled"
    """Stopped on request."""


class Usage(BaseModel):
    """Token counts."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    prompt_tokens: int = Field(0, ge=0)
    """Tokens in the prompt after the chat template."""
    completion_tokens: int = Field(0, ge=0)
    """Tokens generated."""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens


class Timings(BaseModel):
    """Where the time went, in milliseconds (absent when not measured)."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    queue_ms: float | None = Field(None, ge=0)
    """From `created_at` until a batcher dispatched it."""
    ttft_ms: float | None = Field(None, ge=0)
    """From dispatch until the first token came back."""
    generation_ms: float | None = Field(None, ge=0)
    """From dispatch until the last token came back."""
    total_ms: float | None = Field(None, ge=0)
    """From `created_at` until the final reply was published."""


class CacheStatus(StrEnum):
    """How the gateway's caches were involved."""

    MISS = "miss"
    HIT_EXACT = "hit-exact"
    HIT_SEMANTIC = "hit-semantic"
    BYPASS = "bypass"


class TopLogprob(BaseModel):
    """One token that could stand at a position of the answer, with its log probability."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    token_id: _TokenId
    """The model's id of the token."""
    token: str = Field(max_length=MAX_TOKEN_CHARS)
    """The token's text on its own (U+FFFD where it is part of a multi-byte character)."""
    logprob: float = Field(ge=MIN_LOGPROB, le=0.0)
    """Natural log of its probability under the model, clamped at `MIN_LOGPROB`."""


class TokenLogprob(TopLogprob):
    """A generated token's log probability, and the most likely tokens at its position."""

    top: tuple[TopLogprob, ...] = Field((), max_length=MAX_TOP_LOGPROBS)
    """The request's `top_logprobs` most likely tokens, most likely first (empty when it asked
    for none)."""
    rank: int | None = Field(None, ge=1)
    """The token's 1-based rank in the model's whole vocabulary at its position (1: the most
    likely; vLLM's `Logprob.rank`). Given for the prompt's tokens (`prompt_logprobs`, after the
    first); None elsewhere."""


class ReplyKind(StrEnum):
    """The three kinds of ReplyEvent."""

    DELTA = "delta"
    """A piece of generated text (streaming requests only)."""
    FINAL = "final"
    """Generation finished; carries the full text, usage and finish reason."""
    ERROR = "error"
    """The request ended without a result; carries the reason."""


class ReplyEvent(Record):
    """An event for one request, written to its `reply_to` topic, keyed by request id.

    A request gets any number of `delta` events and then exactly one terminal event (`final` or
    `error`); consumers drop duplicates by (`request_id`, `seq`) and everything after a terminal one.
    """

    request_id: RequestId
    """The request this belongs to."""
    kind: ReplyKind
    """Delta, final or error."""
    seq: int = Field(ge=0)
    """Position in this request's event stream, from 0; lets consumers drop duplicates."""
    text: str = Field("", max_length=MAX_TEXT_CHARS)
    """`delta`: the new text. `final`: the whole generated text."""
    finish_reason: FinishReason | None = None
    """`final` only."""
    usage: Usage | None = None
    """`final` only."""
    error: ErrorInfo | None = None
    """`error` only."""
    worker_id: str | None = Field(None, max_length=256)
    """Worker that generated it (labelled `simulated` for the simulated backend)."""
    model: str | None = Field(None, max_length=256)
    """Model that generated it."""
    created_at: float = Field(default_factory=now, gt=0)
    """When the event was published."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """`delta` only, when the request asked for `logprobs`: the tokens generated since the
    previous delta, in order. Log probabilities travel only on deltas, also for requests that do
    not stream (then deltas of empty text carry them just before the final event), so that no
    record holds a whole long answer's worth of them."""
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    """`delta` only, when the request asked for `prompt_logprobs`: the next of the prompt's tokens
    (after the chat template), in order, on deltas of empty text before any other delta. The
    prompt's first token has no log probability (nothing comes before it): its entry has
    `logprob` 0 and no `top` (the API shows null)."""
    prompt_text: str | None = Field(None, max_length=MAX_TEXT_CHARS * 2)
    """`delta` only, for a request whose prompt came as token ids (`prompt_token_ids`): the
    prompt as the worker's tokenizer decodes it, once, on a delta of empty text before any other
    delta (at once for a streaming request, just before the final event for the others), so that
    `echo` can show it."""
    token_ids: tuple[_TokenId, ...] = Field((), max_length=MAX_PROMPT_TOKEN_IDS)
    """`delta` only, when the request asked for `return_token_ids`: the ids of the tokens generated
    since the previous delta that carried any, in order (the end-of-sequence token's included,
    which adds no text). Like `logprobs`, they travel only on deltas: a request that does not
    stream gets them on deltas of empty text just before its final event."""
    prompt_token_ids: tuple[_TokenId, ...] = Field((), max_length=MAX_PROMPT_TOKEN_IDS)
    """`delta` only, when the request asked for `return_token_ids`: the prompt's token ids after
    the chat template, once, on the first delta (as `prompt_text`)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind is ReplyKind.ERROR and self.error is None:
            raise ValueError("an 'error' event needs 'error'")
        if self.kind is ReplyKind.FINAL and self.finish_reason is None:
            raise ValueError("a 'final' event needs 'finish_reason'")
        if (self.logprobs or self.prompt_logprobs) and self.kind is not ReplyKind.DELTA:
            raise ValueError("only 'delta' events carry 'logprobs' and 'prompt_logprobs'")
        about_tokens = self.prompt_text is not None or self.token_ids or self.prompt_token_ids
        if about_tokens and self.kind is not ReplyKind.DELTA:
            raise ValueError("only 'delta' events carry 'prompt_text', 'token_ids' and 'prompt_token_ids'")
        return self

    @property
    def terminal(self) -> bool:
        """Whether this ends the request."""
        return self.kind is not ReplyKind.DELTA


class GenerationResult(Record):
    """The outcome of one request, on `<prefix>.results`, keyed by request id."""

    request_id: RequestId
    """The request."""
    tenant: TenantName
    """Who asked."""
    model: str
    """Model that answered."""
    priority: Priority
    """Scheduling class it ran in."""
    prompt: str = Field(max_length=MAX_TEXT_CHARS * 2)
    """The prompt as text (chat messages joined as `role: content` lines; a prompt of token ids as
    the worker decoded it, empty if no worker did), for the guardian."""
    text: str = Field("", max_length=MAX_TEXT_CHARS)
    """The full generated text (empty on error)."""
    finish_reason: FinishReason | None = None
    """Why generation stopped (absent on error)."""
    error: ErrorInfo | None = None
    """Why it failed, if it did."""
    usage: Usage = Usage()
    """Token counts."""
    timings: Timings = Timings()
    """Where the time went."""
    worker_id: str | None = None
    """Worker that generated it."""
    cache_status: CacheStatus = CacheStatus.MISS
    """Whether a cache answered it."""
    guard: GuardMode = GuardMode.ASYNC
    """The request's guardian preference."""
    created_at: float = Field(default_factory=now, gt=0)
    """When the result was published."""


class Cancel(Record):
    """Stop work on a request: on `<prefix>.cancellations`, read by every batcher instance."""

    request_id: RequestId
    """The request to stop."""
    reason: str = Field("client_disconnected", max_length=256)
    """Why (`client_disconnected`, `timeout`, `operator`, ...)."""
    created_at: float = Field(default_factory=now, gt=0)
    """When it was asked for."""


class MetricsSnapshot(Record):
    """A service's key numbers, on `<prefix>.metrics`, keyed by instance; read by the scaler."""

    service: Literal["gateway", "batcher", "worker", "guardian", "scaler"]
    """Which service."""
    instance: str = Field(min_length=1, max_length=256)
    """Which instance of it."""
    values: dict[str, float] = Field(default_factory=dict)
    """Gauges and counters by name (e.g. `running`, `waiting`, `capacity`, `tokens_per_s`)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Descriptive labels (e.g. `model`, `backend`; `simulated: "true"` for simulated workers)."""
    created_at: float = Field(default_factory=now, gt=0)
    """When it was taken."""


class VerdictAction(StrEnum):
    """What the guardian recommends."""

    ALLOW = "allow"
    FLAG = "flag"
    REDACT = "redact"
    BLOCK = "block"


class CategoryScore(BaseModel):
    """One finding."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    category: str = Field(min_length=1, max_length=128)
    """E.g. `pii.email`, `secret.aws_key`, `injection`, `S1`..`S14`, `policy`."""
    score: float = Field(ge=0.0, le=1.0)
    """Confidence in [0, 1]."""
    detector: str = Field("", max_length=128)
    """Which detector found it."""


class GuardianVerdict(Record):
    """The guardian's judgement of one response or prompt, on `<prefix>.verdicts`."""

    request_id: RequestId
    """The request judged."""
    tenant: TenantName
    """Whose request."""
    kind: Literal["prompt", "response"] = "response"
    """What was judged."""
    action: VerdictAction
    """Recommended action."""
    categories: tuple[CategoryScore, ...] = ()
    """Findings."""
    detectors_run: tuple[str, ...] = ()
    """Detectors that ran, as `name@version`."""
    detectors_skipped: tuple[str, ...] = ()
    """Detectors sampled out."""
    redacted_text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    """The text with PII replaced, when PII was found."""
    latency_ms: float = Field(0.0, ge=0)
    """Evaluation time."""
    created_at: float = Field(default_factory=now, gt=0)
    """When it was decided."""
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    """Share of texts that got the expensive detectors when this was decided (1.0: every text;
    lower while the guardian was behind). `detectors_skipped` says whether this one was sampled out."""
    cached: bool = False
    """Re-issued from the guardian's verdict cache (same content judged before), not re-evaluated."""
    content_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """SHA-256 (hex) of the judged text, UTF-8, so repeated content can be correlated."""


class ScalingDecision(Record):
    """One decision of the scaler, with its reasoning, on `<prefix>.scaling`."""

    service: str = Field("worker", min_length=1, max_length=64)
    """The service scaled."""
    current: int = Field(ge=0)
    """Replicas before."""
    desired: int = Field(ge=0)
    """Replicas wanted."""
    action: Literal["scale_up", "scale_down", "hold"]
    """What follows from it."""
    reason: str = Field(max_length=4_096)
    """Why, in words."""
    signals: dict[str, float] = Field(default_factory=dict)
    """The inputs it was based on."""
    actuator: str = Field("dry-run", max_length=64)
    """Which backend acted (`local`, `docker`, `kubernetes`, `dry-run`)."""
    created_at: float = Field(default_factory=now, gt=0)
    """When it was decided."""


#: Every record type, by the name used for its schema file.
RECORD_TYPES: dict[str, type[Record]] = {
    "GenerationRequest": GenerationRequest,
    "ReplyEvent": ReplyEvent,
    "GenerationResult": GenerationResult,
    "Cancel": Cancel,
    "MetricsSnapshot": MetricsSnapshot,
    "GuardianVerdict": GuardianVerdict,
    "ScalingDecision": ScalingDecision,
}
