"""The OpenAI-compatible wire format: request bodies as the gateway accepts them, and the answers
it sends (these models also make the published OpenAPI document).

Acceptance rules, so that nothing that changes the answer is silently ignored:

* supported parameters are typed and range-checked here;
* OpenAI parameters the gateway cannot honour (tools, response formats other than text, `best_of`
  other than `n`, ...) are accepted only at their neutral value (absent, null, false, 0, empty,
  `{"type": "text"}`) and refused with 400 naming the parameter otherwise;
* parameters that cannot change the answer (`user`, `metadata`, `store`, ...) are accepted and
  ignored;
* anything else is refused as "Unrecognized request argument supplied", as OpenAI's API does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from shared.records import (
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_PROMPT_TOKEN_IDS,
    MAX_STOP_SEQUENCES,
    MAX_STOP_TOKEN_IDS,
    MAX_TEXT_CHARS,
    MAX_TOKEN_ID,
    MAX_TOP_LOGPROBS,
)

__all__ = [
    "MAX_CHOICES",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatDelta",
    "ChatLogprobs",
    "ChatMessageIn",
    "ChatMessageOut",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "ContentPart",
    "ErrorBody",
    "ErrorResponse",
    "ModelCardOut",
    "ModelList",
    "PromptLogprobOut",
    "PromptLogprobsOut",
    "StreamOptions",
    "TextCompletion",
    "TokenLogprobOut",
    "TopLogprobOut",
    "UsageOut",
    "check_prompt_token_ids",
]

PriorityName = Literal["high", "normal", "low"]

#: OpenAI's largest `n`; the gateway's own limit (`gateway_max_choices`) is at most this.
MAX_CHOICES = 128


def _refuse_unless(value: Any, neutral: tuple[Any, ...], what: str) -> Any:
    """Refuse `value` unless it is one of the neutral values that leave the answer unchanged."""
    if value is None or any(value == n and type(value) is type(n) for n in neutral):
        return value
    raise ValueError(f"{what} is not supported by this gateway")


class _Body(BaseModel):
    # Unknown parameters are refused (OpenAI's API does the same) rather than silently ignored.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class StreamOptions(_Body):
    """Options for streamed answers."""

    include_usage: bool | None = None
    """Send a last chunk with `usage` and empty `choices` before `[DONE]`."""
    include_obfuscation: bool | None = None
    """Accepted and ignored (no obfuscation padding is sent)."""


class ContentPart(BaseModel):
    """A part of a message's content; only `{"type": "text", "text": ...}` is supported."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    type: str = Field(max_length=64)
    """`text` (images, audio and files are refused)."""
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    """The text of a `text` part."""


class ChatMessageIn(_Body):
    """One chat turn as a client sends it."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    """Who said it (`tool`/`function` turns need tool support, which is refused)."""
    content: str | list[ContentPart] | None = None
    """Text, or a list of text parts (joined). Null only for an assistant turn."""
    name: str | None = Field(None, max_length=256)
    """Accepted and ignored (the model has no notion of participant names)."""
    tool_calls: Any = None
    """Not supported (no tool calling); must be absent, null or empty."""
    tool_call_id: Any = None
    """Not supported (no tool calling); must be absent or null."""
    function_call: Any = None
    """Not supported (no function calling); must be absent or null."""
    refusal: str | None = None
    """Accepted and ignored (earlier assistant refusals)."""

    @field_validator("role")
    @classmethod
    def _no_tool_roles(cls, role: str) -> str:
        if role in ("tool", "function"):
            raise ValueError(f"messages with role '{role}' need tool calling, which is not supported")
        return role

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise ValueError(f"content parts of type '{part.type}' are not supported (only 'text')")
        return content

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, value: Any) -> Any:
        return _refuse_unless(value, ([],), "tool_calls (tool calling)")

    @field_validator("tool_call_id", "function_call")
    @classmethod
    def _no_tool_fields(cls, value: Any) -> Any:
        return _refuse_unless(value, (), "tool calling")

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessageIn:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs 'content'")
        return self

    def text(self) -> str:
        """The content as plain text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class _GenerationBody(_Body):
    """Parameters shared by /v1/chat/completions and /v1/completions."""

    model: str | None = Field(None, max_length=256)
    """Model to use (see /v1/models); empty or absent: the first model the cluster serves."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate (default and upper limit set by the operator)."""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    """Sampling temperature; 0 is greedy. Default 1."""
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    """Nucleus sampling mass; 0 means greedy. Default 1."""
    stop: str | list[str] | None = None
    """Up to 4 strings that end generation (not included in the output)."""
    seed: int | None = None
    """Sampling seed; the same seed and parameters repeat an answer on the same worker."""
    user: str | None = Field(None, max_length=256)
    """Accepted and ignored (end-user id)."""
    stream: bool | None = False
    """Stream the answer as server-sent events ending in `data: [DONE]`."""
    stream_options: StreamOptions | None = None
    """Streaming options; only with `stream: true`."""
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    """How many choices (answers) to generate for the prompt, 1 by default; at most the
    gateway's `gateway_max_choices` (16 unless the operator says otherwise). Each is sampled on
    its own; with a `seed`, choice i uses seed + i; with temperature 0 all are the same greedy
    answer. Usage counts the prompt once and sums the choices' completion tokens. Requests with
    n > 1 bypass the caches."""
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    """Subtracted from the logit of every token the answer already holds (generated tokens only,
    as OpenAI and vLLM do); > 0 favours new tokens. Null or 0: none."""
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    """Subtracted from a token's logit once per time it occurs in the answer so far; > 0
    discourages repeating the same words. Null or 0: none."""
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    """Token ids of the served model (as strings) to a bias in [-100, 100], added to their logits
    before every pick: -100 in effect bans a token, 100 forces it."""
    metadata: dict[str, str] | None = None
    """Accepted and ignored."""
    store: bool | None = None
    """Accepted and ignored (nothing is stored for later retrieval)."""
    service_tier: str | None = Field(None, max_length=64)
    """Accepted and ignored; use `priority` instead."""
    top_k: int | None = Field(None, ge=0, le=100_000)
    """Extension: sample among the k most likely tokens; 0 disables."""
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    """Extension: > 1 discourages repetition; 1 disables."""
    priority: PriorityName | None = None
    """Extension: scheduling class (overrides the `X-LGC-Priority` header)."""
    ignore_eos: bool | None = None
    """Extension (vLLM's): generate past the model's end-of-sequence token, up to `max_tokens`
    (answers of a fixed length, as benchmarks want); `stop` and `stop_token_ids` still end it."""
    min_tokens: int | None = Field(None, ge=0)
    """Extension (vLLM's): the end-of-sequence token and `stop_token_ids` cannot end the answer
    before this many tokens; at most `max_tokens`. Null or 0: none."""
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    """Extension (vLLM's): up to 64 token ids of the served model that end the answer as its
    end-of-sequence token does (finish reason `stop`; not part of the text)."""
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """Extension (vLLM's): the log probability of every prompt token (after the chat template,
    for chat) given the tokens before it, with this many most likely tokens at each position
    (0-20), in the answer's `prompt_logprobs` (vLLM's shape). The model's own distribution. Not
    with `stream` (as vLLM). Such a request bypasses the caches."""

    return_token_ids: bool | None = None
    """Extension (vLLM's): the answer carries token ids: each choice's generated tokens in
    `token_ids` (the end-of-sequence token's included) and the prompt's after the chat template in
    `prompt_token_ids` (on each completion choice; once on a chat answer). In a stream, each
    chunk's tokens on its choice and the prompt's on the first chunk (chat: at the chunk's top
    level, and the role chunk waits for them). Such a request bypasses the caches."""

    return_tokens_as_token_ids: bool | None = None
    """Extension (vLLM's): with log probabilities, each token and each alternative is named
    `token_id:<id>` instead of by its text (in chat `logprobs`, `bytes` stay those of the token's
    text, as vLLM gives them), for tokens whose text does not identify them (a part of a character,
    two tokens of the same text). Not in `prompt_logprobs`, whose `decoded_token` stays the text."""

    @field_validator("prompt_logprobs")
    @classmethod
    def _not_streamed(cls, value: int | None, info: ValidationInfo) -> int | None:
        # `stream` (declared earlier) is validated first.
        if value is not None and info.data.get("stream"):
            raise ValueError("prompt_logprobs are not available with stream: true")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        items = [stop] if isinstance(stop, str) else (stop or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        for item in items:
            if not item or len(item) > 256:
                raise ValueError("each stop sequence must have 1 to 256 characters")
        return stop

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_token_ids(cls, value: list[int] | None) -> list[int] | None:
        if any(not 0 <= token <= MAX_TOKEN_ID for token in value or ()):
            raise ValueError(f"stop_token_ids must be token ids (integers 0 to {MAX_TOKEN_ID})")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isascii() or not token.isdigit() or int(token) > MAX_TOKEN_ID:
                raise ValueError(
                    f"logit_bias keys must be token ids (integers 0 to {MAX_TOKEN_ID}), not {token[:32]!r}"
                )
            if not -100.0 <= bias <= 100.0:  # NaN fails too
                raise ValueError(f"logit_bias values must be between -100 and 100, not {bias}")
        return value


class ChatCompletionRequest(_GenerationBody):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    """The conversation so far."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """Same as `max_tokens` (the newer name); when both are given they must agree."""
    logprobs: bool | None = None
    """Return the log probability of each generated token (`choices[].logprobs.content`): the
    model's own distribution, before `logit_bias`, penalties, temperature and `top_k`/`top_p`
    (as vLLM's default). Such a request bypasses the caches."""
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """With `logprobs: true`: also the 0 to 20 most likely tokens at each position."""
    response_format: dict[str, Any] | None = None
    """Only `{"type": "text"}` is supported."""
    tools: list[Any] | None = None
    """Not supported (no tool calling); must be absent, null or empty."""
    tool_choice: Any = None
    """Not supported; must be absent, null or "none"."""
    parallel_tool_calls: bool | None = None
    """Accepted and ignored (meaningless without tools)."""
    functions: list[Any] | None = None
    """Not supported (no function calling); must be absent, null or empty."""
    function_call: Any = None
    """Not supported; must be absent, null or "none"."""
    modalities: list[str] | None = None
    """Only `["text"]` is supported."""
    audio: Any = None
    """Not supported (text only)."""
    prediction: Any = None
    """Not supported (no predicted outputs)."""
    web_search_options: Any = None
    """Not supported (no web search)."""
    reasoning_effort: str | None = None
    """Not supported (the served models do not reason in hidden tokens)."""
    verbosity: str | None = None
    """Not supported."""
    safety_identifier: str | None = Field(None, max_length=256)
    """Accepted and ignored."""
    prompt_cache_key: str | None = Field(None, max_length=256)
    """Accepted and ignored (the gateway caches by content)."""

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        # `logprobs` is declared before `top_logprobs`, so it is validated (and in `data`) by now.
        if value and not info.data.get("logprobs"):
            raise ValueError("'logprobs' must be true when 'top_logprobs' is used")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_format_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value != {"type": "text"}:
            raise ValueError(f"response_format of type {value.get('type')!r} is not supported (only 'text')")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool and function calling is not supported")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        return _refuse_unless(value, ("none",), "tool and function calling")

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and value != ["text"]:
            raise ValueError("only the 'text' modality is supported")
        return value

    @field_validator("audio", "prediction", "web_search_options", "reasoning_effort", "verbosity")
    @classmethod
    def _not_supported(cls, value: Any) -> Any:
        return _refuse_unless(value, (), "this parameter")


class CompletionRequest(_GenerationBody):
    """Body of POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    """What to continue: a string; a list of token ids of the model's vocabulary (used as they
    are, no special tokens added, as vLLM uses them); or a list of several prompts (strings, or
    lists of token ids), each continued on its own (`n` choices each, numbered prompt by prompt:
    choice `i * n + j` is choice `j` of prompt `i`, as OpenAI and vLLM number them). At most
    `LGC_GATEWAY_MAX_CHOICES` choices in all; at most 32,768 ids in a prompt. `echo` shows a
    prompt of token ids as the worker's tokenizer decodes it; such a prompt bypasses the caches
    and is not judged by the guardian (its answer is)."""
    max_tokens: int | None = Field(None, ge=0)
    """Most tokens to generate (default: the gateway's `LGC_GATEWAY_DEFAULT_MAX_TOKENS`). 0 only
    with `echo`: the answer is the prompt alone (with `logprobs`, the prompt scored), as vLLM
    answers an echo without generation."""
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    """Return the log probability of each generated token and of this many most likely tokens at
    each position (`choices[].logprobs`; the generated token's is always included, so a position
    may list one more). 0 to 20: OpenAI allows at most 5, vLLM 20, which is what the workers can
    give. The model's own distribution, before `logit_bias`, penalties, temperature and
    `top_k`/`top_p`. Such a request bypasses the caches."""
    echo: bool | None = None
    """Put the prompt before each choice's text (in a stream, as the choice's first chunk). With
    `logprobs`, the prompt's tokens come first in `logprobs` too, each with its log probability
    given the tokens before it (the first has none: null), as OpenAI and vLLM give them."""
    best_of: int | None = None
    """Only as many as `n` (absent, null or equal to `n`): every choice generated is returned, so
    there is no "best" to pick among more."""
    suffix: str | None = None
    """Not supported (no insertion); must be absent, null or empty."""

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, prompt: Any) -> Any:
        # Checked here rather than left to the union of types, whose error would list every
        # member's complaint instead of the one that applies.
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("the list of prompts must not be empty")
            if all(type(item) is int for item in prompt):
                check_prompt_token_ids(prompt, "the prompt")
                return prompt
            if all(isinstance(item, list) for item in prompt):
                for index, ids in enumerate(prompt):
                    check_prompt_token_ids(ids, f"prompt {index}")
            elif not all(isinstance(item, str) for item in prompt):
                raise ValueError(
                    "a list of prompts holds strings, or lists of token ids; a prompt of token ids is a list of "
                    "integers"
                )
            if MAX_CHOICES < len(prompt):
                raise ValueError(f"at most {MAX_CHOICES} prompts are allowed in one request")
            if any(item == "" for item in prompt):
                raise ValueError("the prompts must not be empty")
        elif prompt == "":
            raise ValueError("the prompt must not be empty")
        return prompt

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        # `n` (a field of the base class) is validated before `best_of`; when it is invalid it is
        # missing here, and its own error comes first.
        n = info.data.get("n") or 1
        if value is not None and (type(value) is not int or value != n):
            raise ValueError(f"best_of other than n ({n}) is not supported (every generated choice is returned)")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return _refuse_unless(value, ("",), "suffix")

    def prompt_list(self) -> tuple[str | tuple[int, ...], ...]:
        """The prompts, in order, each a text or a tuple of token ids (one for a string or a
        list of token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return (prompt,)
        if all(type(item) is int for item in prompt):
            return (tuple(prompt),)  # type: ignore[arg-type]
        return tuple(item if isinstance(item, str) else tuple(item) for item in prompt)  # type: ignore[misc]


def check_prompt_token_ids(ids: Sequence[Any], what: str) -> None:
    """ValueError unless `ids` is a prompt of token ids (for the HTTP and gRPC APIs alike): 1 to
    MAX_PROMPT_TOKEN_IDS integers (not booleans, which JSON keeps apart) from 0 to MAX_TOKEN_ID."""
    if not ids:
        raise ValueError(f"{what} must not be empty")
    if MAX_PROMPT_TOKEN_IDS < len(ids):
        raise ValueError(f"{what} has {len(ids)} token ids; at most {MAX_PROMPT_TOKEN_IDS} are allowed")
    if not all(type(token) is int and 0 <= token <= MAX_TOKEN_ID for token in ids):
        raise ValueError(f"{what}: token ids are integers from 0 to {MAX_TOKEN_ID}")


# ---- answers ---------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


def _absent(value: object) -> bool:
    """Fields of vLLM's extensions are left out of an answer that did not ask for them, and unset
    delta fields out of a chunk (OpenAI sends no nulls there)."""
    return value is None


class UsageOut(_Out):
    """Token counts."""

    prompt_tokens: int
    """Tokens in the prompt (after the chat template); once, whatever `n`."""
    completion_tokens: int
    """Tokens generated (by all `n` choices together)."""
    total_tokens: int
    """Sum of both."""


class ChatMessageOut(_Out):
    """The assistant's answer."""

    role: Literal["assistant"] = "assistant"
    """Always `assistant`."""
    content: str
    """The generated text."""
    refusal: str | None = None
    """Always null."""


class TopLogprobOut(_Out):
    """A token that could stand at a position, with its log probability (OpenAI's `TopLogprob`)."""

    token: str
    """The token's text (U+FFFD where it is part of a multi-byte character)."""
    logprob: float
    """Natural log of its probability, -9999 at the lowest."""
    bytes: list[int] | None
    """The UTF-8 bytes of `token`."""


class TokenLogprobOut(TopLogprobOut):
    """A generated token's log probability and the most likely tokens at its position (OpenAI's
    `ChatCompletionTokenLogprob`)."""

    top_logprobs: list[TopLogprobOut]
    """The `top_logprobs` most likely tokens, most likely first (empty when none were asked for)."""


class ChatLogprobs(_Out):
    """Log probabilities of a chat answer, or of a chunk's tokens."""

    content: list[TokenLogprobOut] | None
    """One entry per generated token, in order."""
    refusal: list[TokenLogprobOut] | None = None
    """Always null (the served models have no refusal channel)."""


class CompletionLogprobs(_Out):
    """Log probabilities of a text completion, or of a chunk's tokens (OpenAI's legacy shape)."""

    tokens: list[str]
    """The tokens' texts, in order: with `echo`, the prompt's first, then the generated ones."""
    token_logprobs: list[float | None]
    """Each token's log probability; null for the prompt's first token (with `echo`: nothing comes
    before it)."""
    top_logprobs: list[dict[str, float] | None]
    """Per position: the requested number of most likely tokens and the token itself, text to log
    probability (tokens of the same text appear once, with the higher value); null for the
    prompt's first token."""
    text_offset: list[int]
    """Each token's character offset in the text, cumulated from the tokens' texts (across the
    chunks of a stream; with `echo`, from the prompt's start)."""


class ChatChoice(_Out):
    """One answer of a chat completion."""

    index: int = 0
    """Which of the request's `n` answers this is (0 to n-1); `choices` are in this order."""
    message: ChatMessageOut
    """The answer."""
    logprobs: ChatLogprobs | None = None
    """With `logprobs: true`: the generated tokens' log probabilities; null otherwise, and for an
    answer the content filter redacted."""
    finish_reason: str
    """`stop`, `length` or `cancelled`."""
    token_ids: list[int] | None = Field(None, exclude_if=_absent)
    """With `return_token_ids` (vLLM's extension): the generated tokens' ids, the end-of-sequence
    token's included; absent otherwise, and for an answer the content filter redacted."""


class PromptLogprobOut(_Out):
    """A token at one prompt position with its log probability: vLLM's `Logprob`, as its
    `prompt_logprobs` lists them."""

    logprob: float
    """Natural log of its probability given the prompt's tokens before it, clamped at -9999."""
    rank: int | None = None
    """Its 1-based rank in the model's vocabulary at that position (1: the most likely)."""
    decoded_token: str
    """The token's text on its own."""


PromptLogprobsOut = list[dict[str, PromptLogprobOut] | None]
"""vLLM's `prompt_logprobs`: per prompt token, null for the first (nothing comes before it), else
the prompt token and the most likely tokens there, keyed by token id (a string in JSON)."""


class ChatCompletion(_Out):
    """Answer of POST /v1/chat/completions without streaming."""

    id: str
    """Request id (also in the X-Request-Id header)."""
    object: Literal["chat.completion"] = "chat.completion"
    """Object type."""
    created: int
    """Unix seconds."""
    model: str
    """Model that answered."""
    choices: list[ChatChoice]
    """The `n` answers (one by default), by `index`."""
    usage: UsageOut
    """Token counts."""
    system_fingerprint: str | None = None
    """Always null."""
    prompt_logprobs: PromptLogprobsOut | None = Field(None, exclude_if=_absent)
    """With `prompt_logprobs` (vLLM's extension): the prompt's tokens after the chat template,
    each with its log probability (`PromptLogprobsOut`); absent otherwise."""
    prompt_token_ids: list[int] | None = Field(None, exclude_if=_absent)
    """With `return_token_ids` (vLLM's extension): the prompt's token ids after the chat template;
    absent otherwise."""


class ChatDelta(_Out):
    """New content in a streamed chat answer."""

    role: Literal["assistant"] | None = Field(None, exclude_if=_absent)
    """`assistant` on the first chunk only; absent on the others."""
    content: str | None = Field(None, exclude_if=_absent)
    """The new text; absent on a chunk that only finishes."""


class ChatChunkChoice(_Out):
    """The choice a chat chunk continues."""

    index: int = 0
    """Which of the request's `n` answers this chunk continues (0 to n-1); with n > 1 the answers'
    chunks are interleaved as they come."""
    delta: ChatDelta
    """New content."""
    logprobs: ChatLogprobs | None = None
    """With `logprobs: true`: the log probabilities of this chunk's tokens; else null."""
    finish_reason: str | None = None
    """Set on the last content chunk."""
    token_ids: list[int] | None = Field(None, exclude_if=_absent)
    """With `return_token_ids`: the ids of this chunk's tokens; absent otherwise."""


class ChatCompletionChunk(_Out):
    """One server-sent event of a streamed chat answer."""

    id: str
    """Request id (the same on every chunk)."""
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    """Object type."""
    created: int
    """Unix seconds (the same on every chunk)."""
    model: str
    """Model that answers."""
    choices: list[ChatChunkChoice]
    """One choice (see its `index`); empty in the usage chunk."""
    usage: UsageOut | None = None
    """Only with `stream_options.include_usage`: null except in the last chunk (all choices
    together)."""
    system_fingerprint: str | None = None
    """Always null."""
    prompt_token_ids: list[int] | None = Field(None, exclude_if=_absent)
    """With `return_token_ids`: the prompt's token ids after the chat template, on the first
    chunk (the role chunk) only; absent otherwise."""


class CompletionChoice(_Out):
    """One choice of a text completion, or the choice a text completion chunk continues."""

    index: int = 0
    """Which of the request's answers this is (0 to n-1; with a list of prompts, `i * n + j` for
    choice `j` of prompt `i`); chunks of several answers are interleaved as they come."""
    text: str
    """Generated text (new text in a chunk)."""
    logprobs: CompletionLogprobs | None = None
    """With `logprobs`: the log probabilities of the (chunk's) tokens; else null."""
    finish_reason: str | None = None
    """Set on the final answer or last chunk."""
    prompt_logprobs: PromptLogprobsOut | None = Field(None, exclude_if=_absent)
    """Whole answers computed with the prompt's log probabilities (vLLM's `prompt_logprobs`, or
    `echo` with `logprobs`, as vLLM gives them): its prompt's tokens, each with its log
    probability (`PromptLogprobsOut`); absent otherwise."""
    token_ids: list[int] | None = Field(None, exclude_if=_absent)
    """With `return_token_ids` (vLLM's extension): the generated (a chunk's) tokens' ids, the
    end-of-sequence token's included; absent otherwise, and for an answer the content filter
    redacted."""
    prompt_token_ids: list[int] | None = Field(None, exclude_if=_absent)
    """With `return_token_ids`: the prompt's token ids (in a stream, on the choice's first chunk
    only); absent otherwise."""


class TextCompletion(_Out):
    """Answer of POST /v1/completions, and each chunk of its stream."""

    id: str
    """Request id."""
    object: Literal["text_completion"] = "text_completion"
    """Object type."""
    created: int
    """Unix seconds."""
    model: str
    """Model that answered."""
    choices: list[CompletionChoice]
    """The `n` choices by `index` (a chunk: one); empty in the usage chunk."""
    usage: UsageOut | None = None
    """Token counts (streams: only with `stream_options.include_usage`, in the last chunk)."""
    system_fingerprint: str | None = None
    """Always null."""


class ModelCardOut(_Out):
    """One served model."""

    id: str
    """Model name to put in requests."""
    object: Literal["model"] = "model"
    """Object type."""
    created: int
    """When this gateway first saw a worker serving it (Unix seconds)."""
    owned_by: str = "lgc"
    """Always `lgc`."""


class ModelList(_Out):
    """Answer of GET /v1/models."""

    object: Literal["list"] = "list"
    """Object type."""
    data: list[ModelCardOut]
    """Served models."""


class ErrorBody(_Out):
    """What went wrong."""

    message: str
    """Human-readable explanation."""
    type: str
    """Error class (`invalid_request_error`, `rate_limit_error`, `server_error`, ...)."""
    param: str | None = None
    """The offending parameter, when one is to blame."""
    code: str | None = None
    """Machine-readable reason."""


class ErrorResponse(_Out):
    """Every error answer."""

    error: ErrorBody
    """What went wrong."""
