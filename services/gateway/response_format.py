"""ReplyEvents in OpenAI's exact shapes: whole answers, and server-sent event streams.

Streams follow OpenAI's chat.completion.chunk / text_completion conventions: a chat stream opens
with a chunk whose delta carries `role` (and empty content), then one chunk per delta with
`delta.content`; the final chunk carries `finish_reason` (with any text of the final answer that was
not streamed yet, else an empty delta). With `stream_options.include_usage` every chunk has
`"usage": null` and a last chunk has `usage` and empty `choices`. Every stream ends with
`data: [DONE]`, errors included (an error after the stream started is an event
`data: {"error": {...}}`).

Log probabilities (requests with `logprobs`) come on delta events (services/batcher/README.md):
a whole answer gets those of every delta (GenerationCall.logprobs), a stream gets each delta's on
its chunk, also a delta of empty text (chat: `"content": ""`, as vLLM sends a token that adds no
text yet). Where none are available for an answer that has text (the content filter redacted it),
`logprobs` stays null rather than claiming an empty answer. The legacy completions' `text_offset`
is cumulated from the tokens' texts, from 0 at the completion's start and across the chunks of a
stream.

Several choices (`n` > 1, parallel_sampling.py): a whole answer lists them by `index` with their own
finish reasons and log probabilities, and a usage that counts the prompt once and sums the choices'
completion tokens. A stream uses one formatter per choice (each keeps its own streamed text and
text offsets; its chunks carry its `index`): every choice's opening, the choices' chunks as they
come, each choice's last chunk with its finish reason (`finish`), then once the usage chunk and
`[DONE]` (`ending`), as vLLM streams them. With a list of prompts, choice `i * n + j` is choice
`j` of prompt `i`.

`echo` (completions): a whole answer's choice is given its prompt before its text (:func:`echoed`);
a stream's choice sends its prompt as its first chunk (`opening`). With `max_tokens` 0 the answer
is the prompt alone: the one token the cluster generated is not shown (its text and log
probabilities; usage counts it), as vLLM answers an echo without generation. With `logprobs` too, the
prompt's tokens come first in `logprobs`, the first with null values (nothing comes before it),
as OpenAI and vLLM give them, and `text_offset` counts from the prompt's start; in a stream the
prompt's chunk waits for the prompt's log probabilities (they come on the first deltas) and
carries them.

A whole answer computed with the prompt's log probabilities (vLLM's `prompt_logprobs`, or `echo`
with `logprobs`) also carries them in vLLM's shape (:func:`vllm_prompt_logprobs`): on each
completion choice, and once on a chat answer (its first choice's; every choice has the same
prompt).

Token ids (vLLM's `return_token_ids`) come as vLLM gives them: a whole answer's choices carry their
generated tokens' ids (`token_ids`), and the prompt's (`prompt_token_ids`) are on each completion
choice and once at a chat answer's top level. In a stream every content chunk of the choice has
`token_ids` (its tokens; `[]` for none, as on the last chunk), and the prompt's ids go on the first
chunk after they arrive: a completion choice's next chunk, a chat answer's opening chunk (which
waits for them: they come on the first event, before any token). An answer the content filter
redacted gets none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from shared.records import ReplyEvent, TokenLogprob, TopLogprob, Usage

from services.gateway.errors import ApiError
from services.gateway.openai_protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    CompletionChoice,
    CompletionLogprobs,
    PromptLogprobOut,
    PromptLogprobsOut,
    TextCompletion,
    TokenLogprobOut,
    TopLogprobOut,
    UsageOut,
)
from services.gateway.parallel_sampling import ChoiceResult

__all__ = [
    "DONE_EVENT",
    "ChatStreamFormatter",
    "CompletionStreamFormatter",
    "StreamFormatter",
    "chat_completion_choices",
    "chat_logprobs",
    "completion_logprobs",
    "echoed",
    "finish_reason_name",
    "sse_event",
    "text_completion_choices",
    "unsent_text",
    "usage_out",
    "vllm_prompt_logprobs",
]

T = TypeVar("T")

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


def echoed(result: ChoiceResult, prompt: str, *, prompt_only: bool = False, top: int = 0) -> ChoiceResult:
    """A finished choice with its prompt to put before its text (a completion request's `echo`):
    `prompt`, or for a prompt of token ids the worker's decoding of it (`result.prompt_text`); with
    `prompt_only` (`max_tokens` 0), without its generated text and log probabilities. `top`: the
    request's `logprobs`, how many alternatives the prompt's entries list in `logprobs` (they were
    computed for at least that many: more with a larger `prompt_logprobs`)."""
    if prompt_only:
        final = result.final.model_copy(update={"text": ""})
        result = replace(
            result,
            final=final,
            logprobs=None if result.logprobs is None else (),
            token_ids=None if result.token_ids is None else (),
        )
    listed = tuple(
        lp if len(lp.top) <= top else lp.model_copy(update={"top": lp.top[:top]})
        for lp in result.prompt_logprobs or ()
    )
    echo = prompt if result.prompt_text is None else result.prompt_text
    return replace(result, echo=echo, echo_logprobs=listed)


def vllm_prompt_logprobs(entries: Sequence[TokenLogprob]) -> PromptLogprobsOut:
    """The prompt's log probabilities in vLLM's `prompt_logprobs` shape: null for the first token,
    then per position the prompt token (with its vocabulary rank) and the most likely tokens there
    (ranked by their order), keyed by token id."""
    out: PromptLogprobsOut = [None] if entries else []
    for lp in entries[1:]:
        position = {
            str(t.token_id): PromptLogprobOut(logprob=t.logprob, rank=rank, decoded_token=t.token)
            for rank, t in enumerate(lp.top, start=1)
        }
        position[str(lp.token_id)] = PromptLogprobOut(logprob=lp.logprob, rank=lp.rank, decoded_token=lp.token)
        out.append(position)
    return out


def finish_reason_name(event: ReplyEvent) -> str:
    """A final event's finish reason as the APIs name it (`stop` when it has none)."""
    return event.finish_reason.value if event.finish_reason is not None else "stop"


def unsent_text(final: ReplyEvent, streamed: Sequence[str]) -> str:
    """The end of a final event's whole text that the `streamed` deltas did not carry (a
    non-streaming producer, or one that lost deltas, may hold text not sent yet); nothing when the
    streamed text is not its start."""
    sent = "".join(streamed)
    return final.text[len(sent):] if final.text.startswith(sent) else ""


def _utf8(token: str) -> list[int]:
    # `replace`: a lone surrogate cannot be encoded; it is no real token's text anyway.
    return list(token.encode("utf-8", "replace"))


def _token_name(entry: TokenLogprob | TopLogprob, by_id: bool) -> str:
    """How a log probability names its token: by its text, or as vLLM's
    `return_tokens_as_token_ids` names it (`token_id:<id>`)."""
    return f"token_id:{entry.token_id}" if by_id else entry.token


def chat_logprobs(logprobs: Sequence[TokenLogprob], *, by_id: bool = False) -> ChatLogprobs:
    """Log probabilities in the chat shape (OpenAI's `ChoiceLogprobs`); `by_id`: tokens named by
    id (`_token_name`), their `bytes` still those of their text."""
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=_token_name(lp, by_id),
                logprob=lp.logprob,
                bytes=_utf8(lp.token),
                top_logprobs=[
                    TopLogprobOut(token=_token_name(t, by_id), logprob=t.logprob, bytes=_utf8(t.token))
                    for t in lp.top
                ],
            )
            for lp in logprobs
        ]
    )


def completion_logprobs(
    logprobs: Sequence[TokenLogprob],
    *,
    text_offset: int = 0,
    prompt: Sequence[TokenLogprob] = (),
    by_id: bool = False,
) -> CompletionLogprobs:
    """Log probabilities in the legacy completions shape; `text_offset`: the first token's offset
    (a stream's chunks continue where the previous one ended); `prompt`: the prompt's, listed
    first (`echo`), the prompt's first token with null values; `by_id`: tokens named by id
    (`_token_name`; the offsets count those names, as vLLM counts them)."""
    entries = [*prompt, *logprobs]
    if by_id:
        entries = [_named_by_id(lp) for lp in entries]
    offsets = []
    for lp in entries:
        offsets.append(text_offset)
        text_offset += len(lp.token)
    top: list[dict[str, float] | None] = []
    for lp in entries:
        # OpenAI lists the generated token too when it is not among the most likely ones; a
        # text that two tokens share keeps the first (higher) value.
        position: dict[str, float] = {}
        for entry in (*lp.top, lp):
            position.setdefault(entry.token, entry.logprob)
        top.append(position)
    values: list[float | None] = [lp.logprob for lp in entries]
    if prompt:
        values[0] = top[0] = None  # the prompt's first token: nothing comes before it
    return CompletionLogprobs(
        tokens=[lp.token for lp in entries], token_logprobs=values, top_logprobs=top, text_offset=offsets
    )


def _named_by_id(entry: TokenLogprob) -> TokenLogprob:
    """`entry` with its token and alternatives named by id (the legacy shape has no `bytes`)."""
    top = tuple(t.model_copy(update={"token": _token_name(t, True)}) for t in entry.top)
    return entry.model_copy(update={"token": _token_name(entry, True), "top": top})


def _available(per_token: Sequence[T] | None, text: str) -> Sequence[T] | None:
    """`per_token` (log probabilities, token ids), unless there are none for a non-empty text (an
    answer the content filter redacted): then None, as `[]` would claim that no token was
    generated."""
    if per_token is None or (not per_token and text):
        return None
    return per_token


def _ids(ids: Sequence[int] | None) -> list[int] | None:
    return None if ids is None else list(ids)


def _chat_choice(result: ChoiceResult, by_id: bool) -> ChatChoice:
    final = result.final
    available = _available(result.logprobs, final.text)
    return ChatChoice(
        index=result.index,
        message=ChatMessageOut(content=final.text),
        logprobs=None if available is None else chat_logprobs(available, by_id=by_id),
        finish_reason=finish_reason_name(final),
        token_ids=_ids(_available(result.token_ids, final.text)),
    )


def _completion_choice(result: ChoiceResult, by_id: bool) -> CompletionChoice:
    final = result.final
    available = _available(result.logprobs, final.text)
    out = None
    if available is not None:
        out = completion_logprobs(available, prompt=result.echo_logprobs, by_id=by_id)
    return CompletionChoice(
        index=result.index,
        text=result.echo + final.text,
        logprobs=out,
        finish_reason=finish_reason_name(final),
        prompt_logprobs=None if result.prompt_logprobs is None else vllm_prompt_logprobs(result.prompt_logprobs),
        token_ids=_ids(_available(result.token_ids, final.text)),
        prompt_token_ids=_ids(result.prompt_token_ids),
    )


def chat_completion_choices(
    request_id: str,
    created: int,
    model: str,
    results: Sequence[ChoiceResult],
    usage: Usage | None,
    *,
    tokens_as_ids: bool = False,
) -> ChatCompletion:
    """A whole chat answer of one or more choices, listed by index; `usage`: all of them together;
    `tokens_as_ids`: log probabilities name tokens by id (`return_tokens_as_token_ids`). What is
    about the prompt is given once, as its first choice has it (every choice has the same
    prompt)."""
    ordered = sorted(results, key=lambda r: r.index)
    scored = next((r.prompt_logprobs for r in ordered if r.prompt_logprobs is not None), None)
    prompt_ids = next((r.prompt_token_ids for r in ordered if r.prompt_token_ids is not None), None)
    return ChatCompletion(
        id=request_id,
        created=created,
        model=model,
        choices=[_chat_choice(r, tokens_as_ids) for r in ordered],
        usage=usage_out(usage),
        prompt_logprobs=None if scored is None else vllm_prompt_logprobs(scored),
        prompt_token_ids=_ids(prompt_ids),
    )


def text_completion_choices(
    request_id: str,
    created: int,
    model: str,
    results: Sequence[ChoiceResult],
    usage: Usage | None,
    *,
    tokens_as_ids: bool = False,
) -> TextCompletion:
    """A whole text completion of one or more choices, listed by index; `usage`: all of them
    together; `tokens_as_ids` as for `chat_completion_choices`."""
    choices = [_completion_choice(r, tokens_as_ids) for r in sorted(results, key=lambda r: r.index)]
    return TextCompletion(id=request_id, created=created, model=model, choices=choices, usage=usage_out(usage))


class StreamFormatter:
    """Turns one choice's events into SSE text; subclasses fix the chunk shape."""

    def __init__(
        self,
        request_id: str,
        created: int,
        model: str,
        *,
        include_usage: bool,
        logprobs: bool = False,
        index: int = 0,
        echo: str = "",
        prompt_only: bool = False,
        echo_decoded: bool = False,
        token_ids: bool = False,
        tokens_as_ids: bool = False,
    ) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self.logprobs = logprobs
        """The request asked for log probabilities (else chunks carry none, whatever comes)."""
        self.index = index
        """The choice whose chunks this formats (its `index`; 0 unless the request has several)."""
        self.echo = echo
        """Text sent as the choice's first chunk, before its deltas: the prompt of a completion
        request with `echo` (chat requests have none)."""
        self.prompt_only = prompt_only
        """The answer's own text and log probabilities are not sent (`echo` with `max_tokens` 0)."""
        self.echo_decoded = echo_decoded
        """`echo` of a prompt given as token ids: its text comes on the events (`ReplyEvent.prompt_text`,
        the worker's decoding) and the prompt's chunk waits for it (completions only)."""
        self.token_ids = token_ids
        """The request asked for token ids (`return_token_ids`): every content chunk carries its
        tokens' ids, and the first chunk after they arrive the prompt's."""
        self.tokens_as_ids = tokens_as_ids
        """Log probabilities name tokens by id (`return_tokens_as_token_ids`)."""
        self._prompt_token_ids: tuple[int, ...] = ()
        """The prompt's token ids, arrived and not sent yet."""
        self._prompt_token_ids_noted = False
        self._streamed: list[str] = []

    def opening(self) -> list[str]:
        """Events sent before the first delta."""
        return [self._chunk(self.echo, None, None)] if self.echo else []

    def delta(self, event: ReplyEvent) -> list[str]:
        """Events for one delta (one with log probabilities or token ids is sent even without
        text)."""
        self._note_prompt_token_ids(event)
        if self.prompt_only:
            return []
        self._streamed.append(event.text)
        logprobs = _available(event.logprobs if self.logprobs else None, event.text)
        token_ids = event.token_ids if self.token_ids else ()
        if not event.text and not logprobs and not token_ids:
            return []
        return [self._chunk(event.text, None, logprobs, token_ids)]

    def _note_prompt_token_ids(self, event: ReplyEvent) -> None:
        """Keep the prompt's token ids for the next chunk (the first time they come only: this
        runs more than once per event)."""
        if self.token_ids and event.prompt_token_ids and not self._prompt_token_ids_noted:
            self._prompt_token_ids, self._prompt_token_ids_noted = event.prompt_token_ids, True

    def _take_prompt_token_ids(self) -> list[int] | None:
        """The prompt's token ids for the chunk being made, once (None: none to send)."""
        ids, self._prompt_token_ids = self._prompt_token_ids, ()
        return list(ids) if ids else None

    def _chunk_token_ids(self, token_ids: Sequence[int]) -> list[int] | None:
        """A content chunk's `token_ids`: its tokens' (maybe none) when asked for, else absent."""
        return list(token_ids) if self.token_ids else None

    def final(self, event: ReplyEvent) -> list[str]:
        """Events for the final event of the only choice, through `[DONE]`."""
        return [*self.finish(event), *self.ending(event.usage)]

    def finish(self, event: ReplyEvent) -> list[str]:
        """This choice's last chunk, with its finish reason (and any text not streamed yet)."""
        if self.prompt_only:
            return [self._chunk("", finish_reason_name(event), None)]
        return [self._chunk(unsent_text(event, self._streamed), finish_reason_name(event), None)]

    def ending(self, usage: Usage | None) -> list[str]:
        """The end of the stream once every choice is finished: the usage chunk (when asked for;
        `usage`: all choices together) and `[DONE]`."""
        if self.include_usage:
            return [self._usage_chunk(usage), DONE_EVENT]
        return [DONE_EVENT]

    def error(self, error: ApiError) -> list[str]:
        """Events for a failure after the stream started, through `[DONE]`."""
        return [error.sse_event(), DONE_EVENT]

    def _dump(self, chunk: ChatCompletionChunk | TextCompletion) -> str:
        exclude = None if self.include_usage else {"usage"}
        return sse_event(chunk.model_dump_json(exclude=exclude))

    def _chunk(
        self,
        text: str,
        finish_reason: str | None,
        logprobs: Sequence[TokenLogprob] | None,
        token_ids: Sequence[int] = (),
    ) -> str:
        raise NotImplementedError

    def _usage_chunk(self, usage: Usage | None) -> str:
        raise NotImplementedError


class ChatStreamFormatter(StreamFormatter):
    """chat.completion.chunk events. With token ids, the opening chunk carries the prompt's and
    waits for the first event (which has them)."""

    _opened = False

    def opening(self) -> list[str]:
        return [] if self.token_ids else self._opening()

    def delta(self, event: ReplyEvent) -> list[str]:
        self._note_prompt_token_ids(event)
        return [*self._late_opening(), *super().delta(event)]

    def finish(self, event: ReplyEvent) -> list[str]:
        return [*self._late_opening(), *super().finish(event)]

    def _late_opening(self) -> list[str]:
        """The role chunk that waited for the prompt's token ids, before the first chunk after."""
        return self._opening() if self.token_ids else []

    def _opening(self) -> list[str]:
        """The role chunk, once."""
        if self._opened:
            return []
        self._opened = True
        opening = ChatDelta(role="assistant", content="")
        return [self._chat_chunk(opening, None, prompt_token_ids=self._take_prompt_token_ids())]

    def _chunk(
        self,
        text: str,
        finish_reason: str | None,
        logprobs: Sequence[TokenLogprob] | None,
        token_ids: Sequence[int] = (),
    ) -> str:
        delta = ChatDelta(content=text) if text or finish_reason is None else ChatDelta()
        out = None if logprobs is None else chat_logprobs(logprobs, by_id=self.tokens_as_ids)
        return self._chat_chunk(delta, finish_reason, out, self._chunk_token_ids(token_ids))

    def _chat_chunk(
        self,
        delta: ChatDelta,
        finish_reason: str | None,
        logprobs: ChatLogprobs | None = None,
        token_ids: list[int] | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
    ) -> str:
        choice = ChatChunkChoice(
            index=self.index, delta=delta, logprobs=logprobs, finish_reason=finish_reason, token_ids=token_ids
        )
        chunk = ChatCompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=[choice],
            prompt_token_ids=prompt_token_ids,
        )
        return self._dump(chunk)

    def _usage_chunk(self, usage: Usage | None) -> str:
        chunk = ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model, choices=[], usage=usage_out(usage)
        )
        return self._dump(chunk)


class CompletionStreamFormatter(StreamFormatter):
    """text_completion events."""

    def __init__(
        self,
        request_id: str,
        created: int,
        model: str,
        *,
        include_usage: bool,
        logprobs: bool = False,
        index: int = 0,
        echo: str = "",
        prompt_only: bool = False,
        echo_decoded: bool = False,
        token_ids: bool = False,
        tokens_as_ids: bool = False,
    ) -> None:
        super().__init__(
            request_id,
            created,
            model,
            include_usage=include_usage,
            logprobs=logprobs,
            index=index,
            echo=echo,
            prompt_only=prompt_only,
            echo_decoded=echo_decoded,
            token_ids=token_ids,
            tokens_as_ids=tokens_as_ids,
        )
        self._text_offset = 0
        """Where the next chunk's first token starts (`text_offset` continues across chunks)."""
        self._echo_waits = self.echo_decoded or (bool(self.echo) and (self.logprobs or self.token_ids))
        """The prompt's chunk waits: for the prompt's log probabilities (`echo` with `logprobs`),
        for its token ids (`echo` with `return_token_ids`: they go on it), and for the decoding of
        a prompt of token ids."""
        self._prompt_logprobs: list[TokenLogprob] = []

    def opening(self) -> list[str]:
        return [] if self._echo_waits else super().opening()

    def delta(self, event: ReplyEvent) -> list[str]:
        if not self._echo_waits:
            return super().delta(event)
        if event.prompt_text is not None:
            self.echo = event.prompt_text
        self._prompt_logprobs.extend(event.prompt_logprobs)
        self._note_prompt_token_ids(event)
        if not event.text and not event.logprobs and (self.logprobs or event.prompt_text is None):
            return []  # more of the prompt's log probabilities (or its decoding) may follow
        return [*self._echo_chunk(), *super().delta(event)]

    def finish(self, event: ReplyEvent) -> list[str]:
        return [*self._echo_chunk(), *super().finish(event)] if self._echo_waits else super().finish(event)

    def _echo_chunk(self) -> list[str]:
        """The prompt's chunk, with the prompt's log probabilities when asked for."""
        self._echo_waits = False
        return [self._chunk(self.echo, None, None, prompt=self._prompt_logprobs)]

    def _chunk(
        self,
        text: str,
        finish_reason: str | None,
        logprobs: Sequence[TokenLogprob] | None,
        token_ids: Sequence[int] = (),
        *,
        prompt: Sequence[TokenLogprob] = (),
    ) -> str:
        """A chunk of this choice; `prompt`: the prompt's log probabilities, listed first (the echo
        chunk's). The prompt's token ids go on the first chunk after they arrive."""
        out = None
        if logprobs is not None or prompt:
            out = completion_logprobs(
                logprobs or (), text_offset=self._text_offset, prompt=prompt, by_id=self.tokens_as_ids
            )
            self._text_offset += sum(len(token) for token in out.tokens)
        chunk = TextCompletion(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=[
                CompletionChoice(
                    index=self.index,
                    text=text,
                    logprobs=out,
                    finish_reason=finish_reason,
                    token_ids=self._chunk_token_ids(token_ids),
                    prompt_token_ids=self._take_prompt_token_ids(),
                )
            ],
        )
        return self._dump(chunk)

    def _usage_chunk(self, usage: Usage | None) -> str:
        chunk = TextCompletion(
            id=self.request_id, created=self.created, model=self.model, choices=[], usage=usage_out(usage)
        )
        return self._dump(chunk)
