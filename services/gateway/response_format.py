"""ReplyEvents in OpenAI's exact shapes: whole answers, and server-sent event streams.

Streams follow OpenAI's chat.completion.chunk / text_completion conventions: a chat stream opens
with a chunk whose delta carries `role` (and empty content), then one chunk per delta with
`delta.content`; the final chunk carries `finish_reason` (with any text of the final answer that was
not streamed yet, else an empty delta). With `stream_options.include_usage` every chunk has
`"usage": null` and a last chunk has `usage` and empty `choices`. Every stream ends with
`data: [DONE]`, errors included (an error after the stream started is an event
`data: {"error": {...}}`).
"""

from __future__ import annotations

import json

from shared.records import ReplyEvent, Usage

from services.gateway.errors import ApiError
from services.gateway.openai_protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    TextCompletion,
    UsageOut,
)

__all__ = [
    "DONE_EVENT",
    "ChatStreamFormatter",
    "CompletionStreamFormatter",
    "StreamFormatter",
    "chat_completion",
    "sse_event",
    "text_completion",
    "usage_out",
]

#: The last event of every stream.
DONE_EVENT = "data: [DONE]\n\n"


def sse_event(payload: str) -> str:
    """One server-sent event carrying a JSON payload."""
    return f"data: {payload}\n\n"


def usage_out(usage: Usage | None) -> UsageOut:
    """Token counts in OpenAI's shape (zeros when the worker reported none)."""
    usage = usage or Usage()
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _finish_reason(event: ReplyEvent) -> str:
    return event.finish_reason.value if event.finish_reason is not None else "stop"


def chat_completion(request_id: str, created: int, model: str, final: ReplyEvent) -> ChatCompletion:
    """A whole chat answer from the final event."""
    return ChatCompletion(
        id=request_id,
        created=created,
        model=model,
        choices=[ChatChoice(message=ChatMessageOut(content=final.text), finish_reason=_finish_reason(final))],
        usage=usage_out(final.usage),
    )


def text_completion(request_id: str, created: int, model: str, final: ReplyEvent) -> TextCompletion:
    """A whole text completion from the final event."""
    return TextCompletion(
        id=request_id,
        created=created,
        model=model,
        choices=[CompletionChoice(text=final.text, finish_reason=_finish_reason(final))],
        usage=usage_out(final.usage),
    )


class StreamFormatter:
    """Turns one request's events into SSE text; subclasses fix the chunk shape."""

    def __init__(self, request_id: str, created: int, model: str, *, include_usage: bool) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self._streamed: list[str] = []

    def opening(self) -> list[str]:
        """Events sent before the first delta."""
        return []

    def delta(self, event: ReplyEvent) -> list[str]:
        """Events for one delta."""
        self._streamed.append(event.text)
        if not event.text:
            return []
        return [self._chunk(event.text, None)]

    def final(self, event: ReplyEvent) -> list[str]:
        """Events for the final event, through `[DONE]`."""
        streamed = "".join(self._streamed)
        # A non-streaming producer, or one that lost deltas, may hold text not sent yet.
        rest = event.text[len(streamed):] if event.text.startswith(streamed) else ""
        out = [self._chunk(rest, _finish_reason(event))]
        if self.include_usage:
            out.append(self._usage_chunk(event.usage))
        out.append(DONE_EVENT)
        return out

    def error(self, error: ApiError) -> list[str]:
        """Events for a failure after the stream started, through `[DONE]`."""
        return [error.sse_event(), DONE_EVENT]

    def _dump(self, chunk: ChatCompletionChunk | TextCompletion) -> str:
        exclude = None if self.include_usage else {"usage"}
        return sse_event(chunk.model_dump_json(exclude=exclude))

    def _chunk(self, text: str, finish_reason: str | None) -> str:
        raise NotImplementedError

    def _usage_chunk(self, usage: Usage | None) -> str:
        raise NotImplementedError


class ChatStreamFormatter(StreamFormatter):
    """chat.completion.chunk events."""

    def opening(self) -> list[str]:
        return [self._chat_chunk(ChatDelta(role="assistant", content=""), None)]

    def _chunk(self, text: str, finish_reason: str | None) -> str:
        delta = ChatDelta(content=text) if text or finish_reason is None else ChatDelta()
        return self._chat_chunk(delta, finish_reason)

    def _chat_chunk(self, delta: ChatDelta, finish_reason: str | None) -> str:
        chunk = ChatCompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=[ChatChunkChoice(delta=delta, finish_reason=finish_reason)],
        )
        return self._dump_chat(chunk)

    def _dump_chat(self, chunk: ChatCompletionChunk) -> str:
        data = chunk.model_dump(exclude=None if self.include_usage else {"usage"})
        # OpenAI leaves unset delta fields out rather than sending nulls.
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return sse_event(json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def _usage_chunk(self, usage: Usage | None) -> str:
        chunk = ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model, choices=[], usage=usage_out(usage)
        )
        return self._dump_chat(chunk)


class CompletionStreamFormatter(StreamFormatter):
    """text_completion events."""

    def _chunk(self, text: str, finish_reason: str | None) -> str:
        chunk = TextCompletion(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=[CompletionChoice(text=text, finish_reason=finish_reason)],
        )
        return self._dump(chunk)

    def _usage_chunk(self, usage: Usage | None) -> str:
        chunk = TextCompletion(
            id=self.request_id, created=self.created, model=self.model, choices=[], usage=usage_out(usage)
        )
        return self._dump(chunk)
