"""Joins a sequence's text deltas into fewer, larger ones before they leave the worker.

Every delta the worker streams costs work in every service after it: a gRPC message to the
batcher, a Kafka record to the broker, a record the gateway parses and an SSE chunk it writes. On
a few shared cores that per-token work competes with the model for CPU. With a stream interval of
N, a sequence's first delta still goes at once (time to first token is unchanged), then its text
goes out once N more tokens have been generated, and whatever is left goes just before its end:
the same rule as vLLM's `--stream-interval`. N = 1 sends every delta as it comes. A delta about
the prompt (its log probabilities, its token ids, or the decoding of a prompt of token ids) goes
at once too, with whatever is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.worker.engine import TextDelta, TokenLogprob

__all__ = ["DeltaCoalescer"]


@dataclass(slots=True)
class _Held:
    text: str = ""
    tokens: int = 0
    sent_any: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    prompt_text: str | None = None
    token_ids: list[int] = field(default_factory=list)
    prompt_token_ids: tuple[int, ...] = ()


class DeltaCoalescer:
    """Per-request buffers of text not yet sent (one coalescer per Generate stream)."""

    def __init__(self, interval: int) -> None:
        if interval < 1:
            raise ValueError("the stream interval is at least 1 token")
        self._interval = interval
        self._held: dict[str, _Held] = {}

    def add(self, delta: TextDelta) -> TextDelta | None:
        """Take a delta; returns what to send now (None: held for later)."""
        if self._interval == 1:
            return delta
        held = self._held.setdefault(delta.request_id, _Held())
        held.text += delta.text
        held.tokens += delta.tokens
        held.logprobs.extend(delta.logprobs)
        held.prompt_logprobs += delta.prompt_logprobs
        held.token_ids.extend(delta.token_ids)
        held.prompt_token_ids += delta.prompt_token_ids
        if delta.prompt_text is not None:
            held.prompt_text = delta.prompt_text
        if held.prompt_logprobs or held.prompt_text is not None or held.prompt_token_ids:
            return self._release(delta.request_id, held)
        # Never an empty delta (text may lag tokens by a partial character): the tokens (and their
        # log probabilities) wait with the text they belong to.
        if held.text and (not held.sent_any or held.tokens >= self._interval):
            return self._release(delta.request_id, held)
        return None

    def flush(self, request_id: str) -> TextDelta | None:
        """The request ends: what it still holds, to send before its end (None: nothing)."""
        held = self._held.pop(request_id, None)
        if held is None or not (held.text or held.logprobs or held.token_ids):
            return None
        return TextDelta(request_id, held.text, held.tokens, tuple(held.logprobs), token_ids=tuple(held.token_ids))

    def _release(self, request_id: str, held: _Held) -> TextDelta:
        delta = TextDelta(
            request_id,
            held.text,
            held.tokens,
            tuple(held.logprobs),
            held.prompt_logprobs,
            held.prompt_text,
            tuple(held.token_ids),
            held.prompt_token_ids,
        )
        held.sent_any = held.sent_any or bool(held.text)
        held.text, held.tokens, held.prompt_logprobs, held.prompt_text = "", 0, (), None
        held.prompt_token_ids = ()
        held.logprobs.clear()
        held.token_ids.clear()
        return delta
