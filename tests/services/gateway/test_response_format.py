"""ReplyEvents in OpenAI's shapes: whole answers and SSE chunks."""

from __future__ import annotations

import json

from shared.records import ErrorCode, ErrorInfo, FinishReason, ReplyEvent, ReplyKind, Usage

from services.gateway.errors import ReplyError, map_exception
from services.gateway.response_format import (
    DONE_EVENT,
    ChatStreamFormatter,
    CompletionStreamFormatter,
    chat_completion,
    text_completion,
)

RID = "chatcmpl-abc"


def delta(seq: int, text: str) -> ReplyEvent:
    return ReplyEvent(request_id=RID, kind=ReplyKind.DELTA, seq=seq, text=text)


def final(text: str, reason: FinishReason = FinishReason.STOP, usage: Usage | None = Usage(prompt_tokens=3, completion_tokens=2)) -> ReplyEvent:
    return ReplyEvent(request_id=RID, kind=ReplyKind.FINAL, seq=2, text=text, finish_reason=reason, usage=usage)


def decode(events: list[str]) -> list[dict]:
    out = []
    for event in events:
        assert event.startswith("data: ") and event.endswith("\n\n")
        out.append(json.loads(event[len("data: "):]))
    return out


def test_chat_completion_shape() -> None:
    body = chat_completion(RID, 1700000000, "m", final("Hi!")).model_dump(mode="json")
    assert body == {
        "id": RID,
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi!", "refusal": None}, "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "system_fingerprint": None,
    }


def test_text_completion_shape() -> None:
    body = text_completion("cmpl-1", 5, "m", final("abc", FinishReason.LENGTH, usage=None)).model_dump(mode="json")
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_chat_stream_chunks() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=False)
    events = formatter.opening() + formatter.delta(delta(0, "He")) + formatter.delta(delta(1, "llo")) + formatter.final(final("Hello"))
    assert events[-1] == DONE_EVENT
    chunks = decode(events[:-1])
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == RID and c["created"] == 7 for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "He"}, {"content": "llo"}]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:3])
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_final_chunk_carries_text_not_streamed_yet() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=False)
    formatter.delta(delta(0, "He"))
    (last,) = decode(formatter.final(final("Hello"))[:-1])
    assert last["choices"][0]["delta"] == {"content": "llo"} and last["choices"][0]["finish_reason"] == "stop"


def test_include_usage_adds_usage_chunk_and_nulls() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=True)
    chunks = decode((formatter.opening() + formatter.delta(delta(0, "Hi")) + formatter.final(final("Hi")))[:-1])
    assert [c["usage"] for c in chunks[:-1]] == [None, None, None]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_completion_stream_chunks() -> None:
    formatter = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=True)
    assert formatter.opening() == []
    events = formatter.delta(delta(0, "a")) + formatter.delta(delta(1, "")) + formatter.final(final("ab", FinishReason.LENGTH))
    assert events[-1] == DONE_EVENT
    chunks = decode(events[:-1])
    assert [c["choices"][0]["text"] for c in chunks[:2]] == ["a", "b"]  # empty deltas send nothing
    assert chunks[1]["choices"][0]["finish_reason"] == "length"
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["total_tokens"] == 5
    assert all(c["object"] == "text_completion" for c in chunks)


def test_error_in_stream() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=False)
    api = map_exception(ReplyError(ErrorInfo(code=ErrorCode.WORKER_FAILED, message="worker died")))
    events = formatter.error(api)
    assert events[-1] == DONE_EVENT
    assert decode(events[:-1]) == [
        {"error": {"message": "worker died", "type": "server_error", "param": None, "code": "worker_failed"}}
    ]
