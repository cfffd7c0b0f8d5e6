"""Turning what clients send (OpenAI bodies, gRPC messages) into GenerationRequests.

Translation happens in two steps so that every 400 comes before any look-up: :func:`translate_chat`,
:func:`translate_completion` and :func:`translate_proto` check everything that depends only on the
request and the gateway's limits and give a :class:`TranslatedRequest`; once the model is resolved,
:meth:`TranslatedRequest.to_generation_request` makes the record.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from shared.protos import gateway_pb2
from shared.records import (
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_STOP_SEQUENCES,
    MAX_STOP_TOKEN_IDS,
    MAX_TOKEN_ID,
    MAX_TOP_LOGPROBS,
    SEED_MODULUS,
    ChatMessage,
    GenerationParams,
    GenerationRequest,
    Priority,
)

from services.gateway.errors import InvalidRequestError
from services.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest, check_prompt_token_ids
from services.gateway.settings import GatewaySettings

__all__ = [
    "PRIORITY_HEADER",
    "TranslatedRequest",
    "new_request_id",
    "resolve_priority",
    "translate_chat",
    "translate_completion",
    "translate_proto",
]

#: Header that sets a request's priority (a `priority` field in the body wins over it).
PRIORITY_HEADER = "X-LGC-Priority"

_PROTO_PRIORITIES = {
    gateway_pb2.PRIORITY_HIGH: Priority.HIGH,
    gateway_pb2.PRIORITY_NORMAL: Priority.NORMAL,
    gateway_pb2.PRIORITY_LOW: Priority.LOW,
}


def new_request_id(kind: str) -> str:
    """A fresh request id: `chatcmpl-<hex>`, `cmpl-<hex>` or `gen-<hex>` (gRPC)."""
    return f"{kind}-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class TranslatedRequest:
    """A checked request, waiting only for its id, model and deadline."""

    requested_model: str | None
    """The model the client named (None: the default model)."""
    params: GenerationParams
    """Sampling parameters."""
    priority: Priority
    """Scheduling class."""
    stream: bool
    """Whether the client wants the answer streamed."""
    messages: tuple[ChatMessage, ...] | None = None
    """Chat turns (chat requests)."""
    prompt: str | None = None
    """Raw prompt (completion requests)."""
    include_usage: bool = False
    """Streams: send a usage chunk at the end."""
    n: int = 1
    """How many choices (OpenAI's `n`, the gRPC API's too), for each prompt. Each is a request of
    its own in the cluster (parallel_sampling.py); this record's params are those of choice 0."""
    prompts: tuple[str | tuple[int, ...], ...] = ()
    """A completion request's list of several prompts (texts or token ids), in order (`prompt` or
    `prompt_token_ids` is the first); empty otherwise. Each makes `n` choices (parallel_sampling.py)."""
    echo: bool = False
    """Completions: each choice's text comes after its prompt."""
    prompt_only: bool = False
    """Completions with `echo` and `max_tokens` 0: each choice is its prompt alone. The cluster
    generates one token, which is not shown (vLLM answers an echo without generation so)."""
    prompt_token_ids: tuple[int, ...] | None = None
    """Raw prompt as token ids (completion requests), instead of `prompt`."""
    tokens_as_ids: bool = False
    """vLLM's `return_tokens_as_token_ids`: the answer's log probabilities name each token
    `token_id:<id>` instead of by its text."""

    @property
    def choice_count(self) -> int:
        """How many choices the answer has: `n` for each prompt. One goes through
        `RequestPipeline.submit`, more through `submit_choices`."""
        return self.n * max(1, len(self.prompts))

    def to_generation_request(
        self, *, request_id: str, model: str, deadline: float, tenant: str = "default"
    ) -> GenerationRequest:
        """The record to produce (`reply_to` is set by the engine client)."""
        return GenerationRequest(
            id=request_id,
            priority=self.priority,
            tenant=tenant,
            model=model,
            messages=self.messages,
            prompt=self.prompt,
            params=self.params,
            stream=self.stream,
            deadline=deadline,
            prompt_token_ids=self.prompt_token_ids,
        )


def resolve_priority(body_value: str | None, header_value: str | None, default: Priority) -> Priority:
    """Body `priority`, else the X-LGC-Priority header, else the default."""
    if body_value:
        return Priority(body_value)
    if header_value is None or not header_value.strip():
        return default
    try:
        return Priority(header_value.strip().lower())
    except ValueError:
        # Not a priority name: the client is told which values exist.
        raise InvalidRequestError(
            f"Invalid {PRIORITY_HEADER} header {header_value[:64]!r}: use high, normal or low.",
            param=PRIORITY_HEADER,
        ) from None


def translate_chat(
    body: ChatCompletionRequest,
    settings: GatewaySettings,
    *,
    priority_header: str | None = None,
    default_priority: Priority | None = None,
) -> TranslatedRequest:
    """Check a chat completion body against the gateway's limits (`default_priority`: the
    tenant's, else the gateway's)."""
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        if body.max_tokens != body.max_completion_tokens:
            raise InvalidRequestError(
                "max_tokens and max_completion_tokens disagree; give only one of them.", param="max_tokens"
            )
    requested_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    texts = [m.text() for m in body.messages]
    _check_prompt_size(sum(len(t) for t in texts), settings, param="messages")
    messages = tuple(ChatMessage(role=m.role, content=t) for m, t in zip(body.messages, texts, strict=True))
    return TranslatedRequest(
        requested_model=body.model or None,
        params=_body_params(
            body,
            settings,
            max_tokens=requested_tokens,
            max_tokens_param=param,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs or 0,
        ),
        priority=resolve_priority(body.priority, priority_header, default_priority or settings.gateway_default_priority),
        stream=bool(body.stream),
        messages=messages,
        include_usage=_include_usage(body),
        n=_choices(body.n or 1, settings),
        tokens_as_ids=bool(body.return_tokens_as_token_ids),
    )


def translate_completion(
    body: CompletionRequest,
    settings: GatewaySettings,
    *,
    priority_header: str | None = None,
    default_priority: Priority | None = None,
) -> TranslatedRequest:
    """Check a text completion body against the gateway's limits (`default_priority`: the
    tenant's, else the gateway's)."""
    prompts = body.prompt_list()
    for prompt in prompts:
        if isinstance(prompt, str):  # token ids are bounded by the schema
            _check_prompt_size(len(prompt), settings, param="prompt")
    max_tokens = body.max_tokens
    if max_tokens == 0:
        if not body.echo:
            raise InvalidRequestError(
                "max_tokens must be at least 1; 0 is only for echo (the prompt alone, scored with logprobs).",
                param="max_tokens",
            )
        max_tokens = 1  # the cluster generates at least one token; it is not shown
    return TranslatedRequest(
        requested_model=body.model or None,
        # Legacy `logprobs: N`: the generated tokens' log probabilities and the N most likely;
        # with `echo`, the prompt's too (computed as vLLM's `prompt_logprobs`).
        params=_body_params(
            body,
            settings,
            max_tokens=max_tokens,
            max_tokens_param="max_tokens",
            logprobs=body.logprobs is not None,
            top_logprobs=body.logprobs or 0,
            echo_logprobs=body.logprobs if body.echo else None,
        ),
        priority=resolve_priority(body.priority, priority_header, default_priority or settings.gateway_default_priority),
        stream=bool(body.stream),
        prompt=prompts[0] if isinstance(prompts[0], str) else None,
        include_usage=_include_usage(body),
        n=_choices(body.n or 1, settings, prompts=len(prompts)),
        prompts=prompts if len(prompts) > 1 else (),
        echo=bool(body.echo),
        prompt_only=body.max_tokens == 0,
        prompt_token_ids=None if isinstance(prompts[0], str) else prompts[0],
        tokens_as_ids=bool(body.return_tokens_as_token_ids),
    )


def translate_proto(
    message: gateway_pb2.GenerateRequest,
    settings: GatewaySettings,
    *,
    stream: bool,
    default_priority: Priority | None = None,
) -> TranslatedRequest:
    """Check a gRPC GenerateRequest (proto3 zero values mean "default", as the proto documents)."""
    if bool(message.messages) + bool(message.prompt) + bool(message.prompt_token_ids) != 1:
        raise InvalidRequestError(
            "Exactly one of 'messages', 'prompt' and 'prompt_token_ids' must be given.", param="messages"
        )
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    if message.prompt_token_ids:
        try:
            check_prompt_token_ids(message.prompt_token_ids, "prompt_token_ids")
        except ValueError as exc:
            # Safe: the client's input, refused with the reason the HTTP API gives.
            raise InvalidRequestError(f"{exc}.", param="prompt_token_ids") from None
        prompt_token_ids = tuple(message.prompt_token_ids)
    elif message.messages:
        if len(message.messages) > MAX_MESSAGES:
            raise InvalidRequestError(f"At most {MAX_MESSAGES} messages are allowed.", param="messages")
        _check_prompt_size(sum(len(m.content) for m in message.messages), settings, param="messages")
        turns = []
        for i, turn in enumerate(message.messages):
            if turn.role not in ("system", "developer", "user", "assistant"):
                raise InvalidRequestError(
                    f"messages[{i}].role must be system, developer, user or assistant, not {turn.role[:32]!r}.",
                    param=f"messages[{i}].role",
                )
            turns.append(ChatMessage(role=turn.role, content=turn.content))
        messages = tuple(turns)
    else:
        prompt = message.prompt
        _check_prompt_size(len(prompt), settings, param="prompt")
    if message.priority == gateway_pb2.PRIORITY_UNSPECIFIED:
        priority = default_priority or settings.gateway_default_priority
    elif message.priority in _PROTO_PRIORITIES:
        priority = _PROTO_PRIORITIES[message.priority]
    else:
        raise InvalidRequestError(f"Unknown priority {message.priority}.", param="priority")
    temperature = _from_float32(message.temperature) if message.has_temperature else None
    top_p = _from_float32(message.top_p) if message.top_p != 0 else None
    penalty = _from_float32(message.repetition_penalty) if message.repetition_penalty != 0 else None
    presence = _from_float32(message.presence_penalty)
    frequency = _from_float32(message.frequency_penalty)
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise InvalidRequestError("temperature must be between 0 and 2.", param="temperature")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidRequestError("top_p must be in (0, 1].", param="top_p")
    if penalty is not None and not 0.0 < penalty <= 10.0:
        raise InvalidRequestError("repetition_penalty must be in (0, 10].", param="repetition_penalty")
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        if not -2.0 <= value <= 2.0:  # NaN fails too
            raise InvalidRequestError(f"{name} must be between -2 and 2.", param=name)
    if len(message.logit_bias) > MAX_LOGIT_BIAS:
        raise InvalidRequestError(f"logit_bias may name at most {MAX_LOGIT_BIAS} tokens.", param="logit_bias")
    logit_bias = {token: _from_float32(bias) for token, bias in message.logit_bias.items()}
    if not all(-100.0 <= bias <= 100.0 for bias in logit_bias.values()):
        raise InvalidRequestError("logit_bias values must be between -100 and 100.", param="logit_bias")
    if any(token > MAX_TOKEN_ID for token in logit_bias):
        raise InvalidRequestError(f"logit_bias token ids must be at most {MAX_TOKEN_ID}.", param="logit_bias")
    if message.top_k > 100_000:
        raise InvalidRequestError("top_k must be at most 100000.", param="top_k")
    if message.top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidRequestError(f"top_logprobs must be at most {MAX_TOP_LOGPROBS}.", param="top_logprobs")
    if message.top_logprobs and not message.logprobs:
        raise InvalidRequestError("logprobs must be true when top_logprobs is used.", param="top_logprobs")
    if len(message.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequestError(
            f"stop_token_ids may name at most {MAX_STOP_TOKEN_IDS} tokens.", param="stop_token_ids"
        )
    if any(token > MAX_TOKEN_ID for token in message.stop_token_ids):
        raise InvalidRequestError(f"stop_token_ids must be at most {MAX_TOKEN_ID}.", param="stop_token_ids")
    if message.prompt_top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidRequestError(
            f"prompt_top_logprobs must be at most {MAX_TOP_LOGPROBS}.", param="prompt_top_logprobs"
        )
    if message.prompt_top_logprobs and not message.prompt_logprobs:
        raise InvalidRequestError(
            "prompt_logprobs must be true when prompt_top_logprobs is used.", param="prompt_top_logprobs"
        )
    if message.prompt_logprobs and stream:
        raise InvalidRequestError("prompt_logprobs are not available with GenerateStream.", param="prompt_logprobs")
    stops = list(message.stop)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.", param="stop")
    if any(not s or len(s) > 256 for s in stops):
        raise InvalidRequestError("Each stop sequence must have 1 to 256 characters.", param="stop")
    return TranslatedRequest(
        requested_model=message.model or None,
        params=_params(
            settings,
            max_tokens=message.max_tokens or None,
            max_tokens_param="max_tokens",
            temperature=temperature,
            top_p=top_p,
            top_k=message.top_k,
            stop=stops or None,
            seed=message.seed if message.has_seed else None,
            repetition_penalty=penalty,
            presence_penalty=presence,
            frequency_penalty=frequency,
            logit_bias=logit_bias,
            logprobs=message.logprobs,
            top_logprobs=message.top_logprobs,
            ignore_eos=message.ignore_eos,
            min_tokens=message.min_tokens,
            stop_token_ids=tuple(message.stop_token_ids),
            prompt_logprobs=message.prompt_top_logprobs if message.prompt_logprobs else None,
            return_token_ids=message.return_token_ids,
        ),
        priority=priority,
        stream=stream,
        messages=messages,
        prompt=prompt,
        n=_choices(message.n or 1, settings),
        prompt_token_ids=prompt_token_ids,
    )


# ---- helpers ---------------------------------------------------------------------------------


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError("stream_options is only allowed when stream is true.", param="stream_options")
    return bool(body.stream_options and body.stream_options.include_usage)


def _choices(n: int, settings: GatewaySettings, *, prompts: int = 1) -> int:
    """`n`, when `n` choices for each of `prompts` prompts are within the gateway's limit (an HTTP
    body's own range is OpenAI's, 1 to 128): each choice is a whole request in the cluster, so the
    operator bounds how many one client request makes."""
    limit = settings.gateway_max_choices
    if n * prompts > limit:
        if prompts == 1:
            raise InvalidRequestError(f"n is too large: {n}. This gateway allows at most {limit}.", param="n")
        raise InvalidRequestError(
            f"Too many choices: {prompts} prompts with n = {n} make {n * prompts}. This gateway allows at most "
            f"{limit} in one request.",
            param="prompt",
        )
    return n


def _check_prompt_size(chars: int, settings: GatewaySettings, *, param: str) -> None:
    if chars > settings.gateway_max_prompt_chars:
        raise InvalidRequestError(
            f"The prompt has {chars} characters; this gateway accepts at most "
            f"{settings.gateway_max_prompt_chars}. Shorten the {param}.",
            param=param,
            code="context_length_exceeded",
        )


def _body_params(
    body: ChatCompletionRequest | CompletionRequest,
    settings: GatewaySettings,
    *,
    max_tokens: int | None,
    max_tokens_param: str,
    logprobs: bool,
    top_logprobs: int,
    echo_logprobs: int | None = None,
) -> GenerationParams:
    """Sampling parameters from an OpenAI body (chat and text completions name them alike, but for
    the limit and the log probabilities, which the caller reads). The prompt's log probabilities
    are computed for the body's `prompt_logprobs` and for `echo_logprobs` (a completion's `logprobs`
    when it echoes), with as many alternatives as the larger asks."""
    asked = [count for count in (body.prompt_logprobs, echo_logprobs) if count is not None]
    return _params(
        settings,
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=body.stop,
        seed=body.seed,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias={int(token): bias for token, bias in (body.logit_bias or {}).items()},
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=bool(body.ignore_eos),
        min_tokens=body.min_tokens or 0,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        prompt_logprobs=max(asked) if asked else None,
        return_token_ids=bool(body.return_token_ids),
    )


def _params(
    settings: GatewaySettings,
    *,
    max_tokens: int | None,
    max_tokens_param: str,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    stop: str | list[str] | None,
    seed: int | None,
    repetition_penalty: float | None,
    presence_penalty: float | None,
    frequency_penalty: float | None,
    logit_bias: dict[int, float],
    logprobs: bool,
    top_logprobs: int,
    ignore_eos: bool = False,
    min_tokens: int = 0,
    stop_token_ids: tuple[int, ...] = (),
    prompt_logprobs: int | None = None,
    return_token_ids: bool = False,
) -> GenerationParams:
    limit = settings.gateway_max_tokens_limit
    if max_tokens is None:
        max_new_tokens = min(settings.gateway_default_max_tokens, limit)
    elif max_tokens > limit:
        raise InvalidRequestError(
            f"{max_tokens_param} is too large: {max_tokens}. This gateway allows at most {limit}.",
            param=max_tokens_param,
        )
    else:
        max_new_tokens = max_tokens
    temperature = 1.0 if temperature is None else temperature
    top_p = 1.0 if top_p is None else top_p
    if top_p == 0.0:
        # A nucleus of mass 0 holds only the most likely token: that is greedy decoding.
        temperature, top_p = 0.0, 1.0
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if min_tokens > max_new_tokens:
        raise InvalidRequestError(
            f"min_tokens ({min_tokens}) must not exceed the answer's length limit ({max_new_tokens}).",
            param="min_tokens",
        )
    return GenerationParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k or 0,
        stop=stops,
        seed=None if seed is None else seed % SEED_MODULUS,
        repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
        logit_bias=logit_bias,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=ignore_eos,
        min_tokens=min_tokens,
        stop_token_ids=stop_token_ids,
        prompt_logprobs=prompt_logprobs,
        return_token_ids=return_token_ids,
    )


def _from_float32(value: float) -> float:
    """A proto float32 as the decimal the client most likely wrote (0.7f is 0.699999988...), so
    that gRPC and HTTP requests with the same parameters batch together."""
    if math.isnan(value) or math.isinf(value):
        return value
    return float(f"{value:.6g}")
