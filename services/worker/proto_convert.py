"""Converts between the Worker protobuf messages and the engine's types, validating at the edge.

Problems with one item raise :class:`InvalidItemError` (that item fails with INVALID_REQUEST and the
others go on); problems with the whole call raise :class:`InvalidArgumentError` (the RPC ends
with INVALID_ARGUMENT).
"""

from __future__ import annotations

import math

from services.worker.engine import (
    ChatTurn,
    EngineEvent,
    FailureCode,
    FinishReason,
    SamplingParams,
    SequenceFailed,
    SequenceFinished,
    TextDelta,
    TokenLogprob,
    WorkItem,
)
from shared.protos import worker_pb2
from shared.records import MAX_TOP_LOGPROBS

__all__ = [
    "InvalidArgumentError",
    "InvalidItemError",
    "MAX_REQUEST_ID_LENGTH",
    "event_to_proto",
    "sampling_params_from_proto",
    "work_item_from_proto",
]

MAX_REQUEST_ID_LENGTH = 256
_MAX_STOP_STRINGS = 16
_MAX_STOP_LENGTH = 1024
_MAX_LOGIT_BIAS = 1024
_MAX_STOP_TOKEN_IDS = 1024

_FINISH_REASONS = {
    FinishReason.STOP: worker_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: worker_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: worker_pb2.FINISH_REASON_CANCELLED,
}
_FAILURE_CODES = {
    FailureCode.INVALID_REQUEST: worker_pb2.FAILURE_CODE_INVALID_REQUEST,
    FailureCode.DEADLINE_EXCEEDED: worker_pb2.FAILURE_CODE_DEADLINE_EXCEEDED,
    FailureCode.OVERLOADED: worker_pb2.FAILURE_CODE_OVERLOADED,
    FailureCode.INTERNAL: worker_pb2.FAILURE_CODE_INTERNAL,
    FailureCode.MODEL_NOT_FOUND: worker_pb2.FAILURE_CODE_MODEL_NOT_FOUND,
}


class InvalidArgumentError(ValueError):
    """The call as a whole is unusable (gRPC INVALID_ARGUMENT)."""


class InvalidItemError(ValueError):
    """One work item is unusable (it fails with INVALID_REQUEST)."""


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidItemError(f"{name} must be a finite number, not {value}")
    return value


def sampling_params_from_proto(msg: worker_pb2.SamplingParams) -> SamplingParams:
    if msg.max_new_tokens < 1:
        raise InvalidItemError("params.max_new_tokens must be at least 1")
    temperature = _finite("params.temperature", msg.temperature)
    if temperature < 0:
        raise InvalidItemError(f"params.temperature must be >= 0, not {temperature}")
    top_p = _finite("params.top_p", msg.top_p) or 1.0
    if not 0 < top_p <= 1:
        raise InvalidItemError(f"params.top_p must be in (0, 1], not {top_p}")
    penalty = _finite("params.repetition_penalty", msg.repetition_penalty) or 1.0
    if penalty <= 0:
        raise InvalidItemError(f"params.repetition_penalty must be > 0, not {penalty}")
    presence = _finite("params.presence_penalty", msg.presence_penalty)
    frequency = _finite("params.frequency_penalty", msg.frequency_penalty)
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        if not -2.0 <= value <= 2.0:
            raise InvalidItemError(f"params.{name} must be in [-2, 2], not {value}")
    if len(msg.logit_bias) > _MAX_LOGIT_BIAS:
        raise InvalidItemError(f"params.logit_bias names {len(msg.logit_bias)} tokens; at most {_MAX_LOGIT_BIAS}")
    logit_bias = tuple(sorted((token, _finite("params.logit_bias", bias)) for token, bias in msg.logit_bias.items()))
    if any(not -100.0 <= bias <= 100.0 for _, bias in logit_bias):
        raise InvalidItemError("params.logit_bias values must be in [-100, 100]")
    if msg.top_logprobs and not msg.logprobs:
        raise InvalidItemError("params.top_logprobs needs params.logprobs")
    if msg.top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidItemError(f"params.top_logprobs must be at most {MAX_TOP_LOGPROBS}, not {msg.top_logprobs}")
    if msg.prompt_top_logprobs and not msg.prompt_logprobs:
        raise InvalidItemError("params.prompt_top_logprobs needs params.prompt_logprobs")
    if msg.prompt_top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidItemError(
            f"params.prompt_top_logprobs must be at most {MAX_TOP_LOGPROBS}, not {msg.prompt_top_logprobs}"
        )
    if msg.min_tokens > msg.max_new_tokens:
        raise InvalidItemError(f"params.min_tokens ({msg.min_tokens}) must not exceed max_new_tokens ({msg.max_new_tokens})")
    if len(msg.stop_token_ids) > _MAX_STOP_TOKEN_IDS:
        raise InvalidItemError(f"params.stop_token_ids names {len(msg.stop_token_ids)} tokens; at most {_MAX_STOP_TOKEN_IDS}")
    stops = tuple(msg.stop)
    if len(stops) > _MAX_STOP_STRINGS:
        raise InvalidItemError(f"at most {_MAX_STOP_STRINGS} stop strings, not {len(stops)}")
    if any(not s or len(s) > _MAX_STOP_LENGTH for s in stops):
        raise InvalidItemError(f"stop strings must be 1 to {_MAX_STOP_LENGTH} characters long")
    return SamplingParams(
        max_new_tokens=msg.max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=msg.top_k,
        stop=stops,
        seed=msg.seed if msg.has_seed else None,
        repetition_penalty=penalty,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logit_bias=logit_bias,
        logprobs=msg.top_logprobs if msg.logprobs else None,
        ignore_eos=msg.ignore_eos,
        min_tokens=msg.min_tokens,
        stop_token_ids=tuple(sorted(set(msg.stop_token_ids))),
        prompt_logprobs=msg.prompt_top_logprobs if msg.prompt_logprobs else None,
        return_token_ids=msg.return_token_ids,
    )


def work_item_from_proto(msg: worker_pb2.WorkItem) -> WorkItem:
    """A validated WorkItem; InvalidItemError says what is wrong (the request id is checked by
    the caller, since without one no event could name the item)."""
    messages = tuple(ChatTurn(m.role, m.content) for m in msg.messages)
    if any(not m.role for m in messages):
        raise InvalidItemError("every chat message needs a role")
    if not messages and not msg.prompt and not msg.prompt_token_ids:
        raise InvalidItemError("the item has neither a prompt nor messages")
    if msg.prompt and msg.prompt_token_ids:
        raise InvalidItemError("the item has both a prompt and prompt_token_ids; give one")
    deadline = _finite("deadline_unix", msg.deadline_unix)
    if deadline < 0:
        raise InvalidItemError("deadline_unix must be a Unix time (or 0 for none)")
    return WorkItem(
        request_id=msg.request_id,
        prompt=msg.prompt,
        messages=messages,
        params=sampling_params_from_proto(msg.params),
        deadline_unix=deadline or None,
        continuation=msg.continuation,
        continuation_tokens=msg.continuation_tokens,
        prompt_token_ids=tuple(msg.prompt_token_ids),
    )


def event_to_proto(event: EngineEvent) -> worker_pb2.GenerateEvent:
    if isinstance(event, TextDelta):
        delta = worker_pb2.TokenDelta(text=event.text, tokens=event.tokens)
        if event.logprobs:
            delta.logprobs.extend(_logprob_to_proto(entry) for entry in event.logprobs)
        if event.prompt_logprobs:
            delta.prompt_logprobs.extend(_logprob_to_proto(entry) for entry in event.prompt_logprobs)
        if event.prompt_text is not None:
            delta.prompt_text = event.prompt_text
        delta.token_ids.extend(event.token_ids)
        delta.prompt_token_ids.extend(event.prompt_token_ids)
        return worker_pb2.GenerateEvent(request_id=event.request_id, delta=delta)
    if isinstance(event, SequenceFinished):
        return worker_pb2.GenerateEvent(
            request_id=event.request_id,
            finished=worker_pb2.Finished(
                reason=_FINISH_REASONS[event.reason],
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                ttft_ms=event.ttft_ms,
                total_ms=event.total_ms,
            ),
        )
    if isinstance(event, SequenceFailed):
        return worker_pb2.GenerateEvent(
            request_id=event.request_id,
            failed=worker_pb2.Failed(code=_FAILURE_CODES[event.code], message=event.message),
        )
    raise TypeError(f"not an engine event: {event!r}")


def _logprob_to_proto(entry: TokenLogprob) -> worker_pb2.TokenLogprob:
    return worker_pb2.TokenLogprob(
        token_id=entry.token_id,
        token=entry.token,
        logprob=entry.logprob,
        top=[worker_pb2.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob) for t in entry.top],
        rank=entry.rank or 0,
    )
