"""ReplyEvents in OpenAI's shapes: whole answers and SSE chunks."""

from __future__ import annotations

import json
from collections.abc import Sequence

from openai.types.chat import ChatCompletion as OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChatCompletionChunk
from openai.types.completion_choice import CompletionChoice as OpenAICompletionChoice
from openai.types.completion_choice import Logprobs as OpenAILogprobs

from shared.records import ErrorCode, ErrorInfo, FinishReason, ReplyEvent, ReplyKind, TokenLogprob, TopLogprob, Usage

from services.gateway.errors import ReplyError, map_exception
from services.gateway.openai_protocol import ChatCompletion, TextCompletion
from services.gateway.response_format import (
    DONE_EVENT,
    ChatStreamFormatter,
    CompletionStreamFormatter,
    chat_completion_choices,
    echoed,
    text_completion_choices,
    vllm_prompt_logprobs,
)
from services.gateway.parallel_sampling import ChoiceResult

RID = "chatcmpl-abc"


def chat_completion(
    request_id: str, created: int, model: str, final: ReplyEvent, logprobs: Sequence[TokenLogprob] | None = None
) -> ChatCompletion:
    """A whole chat answer of one choice, as the HTTP API makes it."""
    return chat_completion_choices(request_id, created, model, [ChoiceResult(0, final, logprobs)], final.usage)


def text_completion(
    request_id: str, created: int, model: str, final: ReplyEvent, logprobs: Sequence[TokenLogprob] | None = None
) -> TextCompletion:
    """A whole text completion of one choice, as the HTTP API makes it."""
    return text_completion_choices(request_id, created, model, [ChoiceResult(0, final, logprobs)], final.usage)


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


def test_echo_puts_the_prompt_first() -> None:
    # A whole answer: the prompt before the text, nothing else changed.
    whole = echoed(ChoiceResult(0, final("ab", FinishReason.LENGTH), None), "Say: ")
    assert whole.final.text == "ab" and whole.echo == "Say: "
    choice = text_completion_choices("cmpl-1", 7, "m", [whole], whole.final.usage).choices[0]
    assert (choice.text, choice.finish_reason) == ("Say: ab", "length")
    # max_tokens 0: the prompt alone, scored; the generated token is not shown.
    prompt = (TokenLogprob(token_id=1, token="Say", logprob=0.0), TokenLogprob(token_id=2, token=":", logprob=-1.5))
    generated = (TokenLogprob(token_id=3, token="ab", logprob=-0.5),)
    alone = echoed(ChoiceResult(0, final("ab"), generated, prompt), "Say:", prompt_only=True)
    choice = text_completion_choices("cmpl-1", 7, "m", [alone], None).choices[0]
    assert choice.text == "Say:" and choice.logprobs is not None
    assert (choice.logprobs.tokens, choice.logprobs.token_logprobs) == (["Say", ":"], [None, -1.5])
    # A stream: the prompt is the choice's first chunk; the final chunk sends no text twice.
    formatter = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=False, index=2, echo="Say: ")
    events = formatter.opening() + formatter.delta(delta(0, "a")) + formatter.final(final("ab"))
    chunks = decode(events[:-1])
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in chunks] == [(2, "Say: "), (2, "a"), (2, "b")]
    assert chunks[0]["choices"][0]["finish_reason"] is None and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # max_tokens 0: the prompt, then only the finish reason; the generated text never shows.
    alone = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=False, echo="Say: ", prompt_only=True)
    events = alone.opening() + alone.delta(delta(0, "a")) + alone.final(final("a"))
    chunks = decode(events[:-1])
    shown = [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks]
    assert shown == [("Say: ", None), ("", "stop")]


def test_echo_of_a_prompt_of_token_ids_shows_the_workers_decoding() -> None:
    decoded = ReplyEvent(request_id=RID, kind=ReplyKind.DELTA, seq=0, prompt_text="Say: ")
    # A whole answer: the decoding the result carries, not the (empty) prompt text of the request.
    whole = echoed(ChoiceResult(0, final("ab"), None, prompt_text="Say: "), "")
    assert text_completion_choices("cmpl-1", 7, "m", [whole], None).choices[0].text == "Say: ab"
    # A stream: the prompt's chunk waits for the decoding, then leaves at once.
    formatter = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=False, echo_decoded=True)
    assert formatter.opening() == []
    events = formatter.delta(decoded) + formatter.delta(delta(1, "a")) + formatter.final(final("ab"))
    assert [c["choices"][0]["text"] for c in decode(events[:-1])] == ["Say: ", "a", "b"]
    # With logprobs, it waits for the prompt's log probabilities too (they come with the first token).
    scored = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=False, logprobs=True, echo_decoded=True)
    prompt = (TokenLogprob(token_id=1, token="Say", logprob=0.0), TokenLogprob(token_id=2, token=": ", logprob=-1.5))
    assert scored.delta(decoded) == []
    with_prompt = ReplyEvent(request_id=RID, kind=ReplyKind.DELTA, seq=1, prompt_logprobs=prompt)
    assert scored.delta(with_prompt) == []
    chunks = decode(scored.delta(delta_with(2, "a", logprobs("a"))))
    assert [c["choices"][0]["text"] for c in chunks] == ["Say: ", "a"]
    assert chunks[0]["choices"][0]["logprobs"]["token_logprobs"] == [None, -1.5]


def test_error_in_stream() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=False)
    api = map_exception(ReplyError(ErrorInfo(code=ErrorCode.WORKER_FAILED, message="worker died")))
    events = formatter.error(api)
    assert events[-1] == DONE_EVENT
    assert decode(events[:-1]) == [
        {"error": {"message": "worker died", "type": "server_error", "param": None, "code": "worker_failed"}}
    ]


# ---- log probabilities -----------------------------------------------------------------------


def logprobs(*tokens: str, top: int = 2) -> tuple[TokenLogprob, ...]:
    """One entry per token (logprob -0.5), each with `top` alternatives: itself, then "x" at -3."""
    return tuple(
        TokenLogprob(
            token_id=i,
            token=token,
            logprob=-0.5,
            top=(
                TopLogprob(token_id=i, token=token, logprob=-0.5),
                TopLogprob(token_id=99, token="x", logprob=-3.0),
            )[:top],
        )
        for i, token in enumerate(tokens)
    )


def delta_with(seq: int, text: str, lps: tuple[TokenLogprob, ...]) -> ReplyEvent:
    return ReplyEvent(request_id=RID, kind=ReplyKind.DELTA, seq=seq, text=text, logprobs=lps)


def test_chat_completion_logprobs_parse_with_the_openai_client() -> None:
    body = chat_completion(RID, 1, "m", final("Hé!"), logprobs("H", "é", "!")).model_dump(mode="json")
    parsed = OpenAIChatCompletion.model_validate(body)
    content = parsed.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [(t.token, t.logprob) for t in content] == [("H", -0.5), ("é", -0.5), ("!", -0.5)]
    assert content[1].bytes == [0xC3, 0xA9]  # the token's UTF-8 bytes
    assert [(t.token, t.logprob, t.bytes) for t in content[0].top_logprobs] == [("H", -0.5, [72]), ("x", -3.0, [120])]
    assert body["choices"][0]["logprobs"]["refusal"] is None


def test_logprobs_are_null_unless_asked_for_and_available() -> None:
    assert chat_completion(RID, 1, "m", final("Hi")).choices[0].logprobs is None  # not asked for
    # Asked for, and none available for a text that has some (an answer the content filter redacted).
    assert chat_completion(RID, 1, "m", final("Hi"), []).choices[0].logprobs is None
    assert text_completion(RID, 1, "m", final("Hi"), []).choices[0].logprobs is None
    empty = chat_completion(RID, 1, "m", final(""), []).choices[0].logprobs  # no token generated
    assert empty is not None and empty.content == []


def test_text_completion_logprobs_parse_with_the_openai_client() -> None:
    lps = logprobs("ab", "x", "cde")
    body = text_completion("cmpl-1", 1, "m", final("abxcde"), lps).model_dump(mode="json")
    parsed = OpenAICompletionChoice.model_validate(body["choices"][0]).logprobs
    assert parsed is not None
    assert parsed.tokens == ["ab", "x", "cde"] and parsed.token_logprobs == [-0.5, -0.5, -0.5]
    assert parsed.text_offset == [0, 2, 3]
    # The generated token is listed too; "x" is both an alternative and generated: listed once.
    assert parsed.top_logprobs == [{"ab": -0.5, "x": -3.0}, {"x": -0.5}, {"cde": -0.5, "x": -3.0}]
    legacy_zero = text_completion("cmpl-1", 1, "m", final("ab"), logprobs("ab", top=0)).choices[0].logprobs
    assert legacy_zero is not None and legacy_zero.top_logprobs == [{"ab": -0.5}]  # logprobs=0: the token only


def test_chat_stream_chunks_carry_their_tokens_logprobs() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=False, logprobs=True)
    events = (
        formatter.opening()
        + formatter.delta(delta_with(0, "He", logprobs("H", "e")))
        + formatter.delta(delta_with(1, "", logprobs("l")))  # no text yet: still a chunk
        + formatter.delta(delta_with(2, "llo", logprobs("lo")))
        + formatter.delta(delta_with(3, "", ()))  # nothing at all: no chunk
        + formatter.final(final("Hello"))
    )
    chunks = decode(events[:-1])
    parsed = [OpenAIChatCompletionChunk.model_validate(c) for c in chunks]
    assert [c.choices[0].delta.content for c in parsed] == ["", "He", "", "llo", None]
    assert [[t.token for t in c.choices[0].logprobs.content] for c in parsed[1:4]] == [["H", "e"], ["l"], ["lo"]]
    assert parsed[0].choices[0].logprobs is None and parsed[4].choices[0].logprobs is None
    assert chunks[2]["choices"][0]["delta"] == {"content": ""}


def test_stream_chunks_carry_no_logprobs_unless_asked_for() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=False)
    events = formatter.delta(delta_with(0, "He", logprobs("He"))) + formatter.delta(delta_with(1, "", logprobs("x")))
    (chunk,) = decode(events)
    assert chunk["choices"][0]["logprobs"] is None


def test_completion_stream_text_offsets_continue_across_chunks() -> None:
    formatter = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=False, logprobs=True)
    events = (
        formatter.delta(delta_with(0, "ab", logprobs("a", "b")))
        + formatter.delta(delta_with(1, "", logprobs("cd")))
        + formatter.delta(delta_with(2, "cde", logprobs("e")))
        + formatter.final(final("abcde"))
    )
    chunks = decode(events[:-1])
    # OpenAI's chunk type requires a finish_reason the client does not check in streams: the
    # log probabilities are parsed with its type on their own.
    parsed = [OpenAILogprobs.model_validate(c["choices"][0]["logprobs"]) for c in chunks[:3]]
    assert [p.text_offset for p in parsed] == [[0, 1], [2], [4]]
    assert [p.tokens for p in parsed] == [["a", "b"], ["cd"], ["e"]]
    assert [c["choices"][0]["text"] for c in chunks] == ["ab", "", "cde", ""]
    assert chunks[3]["choices"][0]["logprobs"] is None and chunks[3]["choices"][0]["finish_reason"] == "stop"


# ---- several choices (n > 1) -------------------------------------------------------------------


def test_whole_answer_of_several_choices_lists_them_by_index() -> None:
    results = [  # out of order, as they may finish
        ChoiceResult(2, final("C", FinishReason.LENGTH), logprobs("C")),
        ChoiceResult(0, final("A"), logprobs("A")),
        ChoiceResult(1, final("B"), logprobs("B")),
    ]
    usage = Usage(prompt_tokens=3, completion_tokens=6)
    body = chat_completion_choices(RID, 1, "m", results, usage).model_dump(mode="json")
    parsed = OpenAIChatCompletion.model_validate(body)
    assert [c.index for c in parsed.choices] == [0, 1, 2]
    assert [c.message.content for c in parsed.choices] == ["A", "B", "C"]
    assert [c.finish_reason for c in parsed.choices] == ["stop", "stop", "length"]
    tokens = [[t.token for t in c.logprobs.content or ()] for c in parsed.choices]  # type: ignore[union-attr]
    assert tokens == [["A"], ["B"], ["C"]]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    texts = text_completion_choices("cmpl-1", 1, "m", results[1:], usage).model_dump(mode="json")
    assert [(c["index"], c["text"]) for c in texts["choices"]] == [(0, "A"), (1, "B")]
    assert all(c["logprobs"] is not None for c in texts["choices"])
    unasked = text_completion_choices("cmpl-1", 1, "m", [ChoiceResult(0, final("A"))], usage)
    assert unasked.choices[0].logprobs is None


def test_stream_formatters_of_several_choices() -> None:
    first = ChatStreamFormatter(RID, 7, "m", include_usage=True, index=0)
    second = ChatStreamFormatter(RID, 7, "m", include_usage=True, index=1)
    events = (
        first.opening()
        + second.opening()
        + second.delta(delta(0, "B"))
        + first.delta(delta(0, "A"))
        + second.finish(final("Bb", FinishReason.LENGTH))
        + first.finish(final("A"))
    )
    assert DONE_EVENT not in events  # a choice's end is not the stream's
    events += first.ending(Usage(prompt_tokens=3, completion_tokens=4))
    assert events[-1] == DONE_EVENT and events.count(DONE_EVENT) == 1
    chunks = [OpenAIChatCompletionChunk.model_validate(c) for c in decode(events[:-1])]
    assert [(c.choices[0].index, c.choices[0].delta.role) for c in chunks[:2]] == [(0, "assistant"), (1, "assistant")]
    assert [(c.choices[0].index, c.choices[0].delta.content) for c in chunks[2:4]] == [(1, "B"), (0, "A")]
    # Each choice's last chunk: its own finish reason, and the text it had not streamed yet.
    assert [(c.choices[0].index, c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks[4:6]] == [
        (1, "b", "length"),
        (0, None, "stop"),
    ]
    assert chunks[6].choices == [] and chunks[6].usage is not None and chunks[6].usage.total_tokens == 7


def test_completion_stream_offsets_are_per_choice() -> None:
    first = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=False, logprobs=True, index=0)
    second = CompletionStreamFormatter("cmpl-1", 7, "m", include_usage=False, logprobs=True, index=1)
    chunks = decode(
        first.delta(delta_with(0, "ab", logprobs("a", "b")))
        + second.delta(delta_with(0, "xy", logprobs("xy")))
        + first.delta(delta_with(1, "c", logprobs("c")))
    )
    assert [c["choices"][0]["index"] for c in chunks] == [0, 1, 0]
    assert [c["choices"][0]["logprobs"]["text_offset"] for c in chunks] == [[0, 1], [0], [2]]


def test_final_is_finish_then_ending() -> None:
    one = ChatStreamFormatter(RID, 7, "m", include_usage=True)
    other = ChatStreamFormatter(RID, 7, "m", include_usage=True)
    event = final("Hi")
    assert one.final(event) == other.finish(event) + other.ending(event.usage)


def test_prompt_logprobs_in_vllms_shape_on_whole_answers() -> None:
    alternatives = (TopLogprob(token_id=9, token=" a", logprob=-0.2), TopLogprob(token_id=4, token=" b", logprob=-0.7))
    prompt = (
        TokenLogprob(token_id=1, token="Say", logprob=0.0),
        TokenLogprob(token_id=4, token=" b", logprob=-0.7, top=alternatives, rank=2),
        TokenLogprob(token_id=3, token=" c", logprob=-6.0, top=alternatives, rank=40),
    )
    shaped = [None if p is None else {k: v.model_dump() for k, v in p.items()} for p in vllm_prompt_logprobs(prompt)]
    assert shaped == [
        None,
        {
            "9": {"logprob": -0.2, "rank": 1, "decoded_token": " a"},
            "4": {"logprob": -0.7, "rank": 2, "decoded_token": " b"},
        },
        {
            "9": {"logprob": -0.2, "rank": 1, "decoded_token": " a"},
            "4": {"logprob": -0.7, "rank": 2, "decoded_token": " b"},
            "3": {"logprob": -6.0, "rank": 40, "decoded_token": " c"},
        },
    ]
    # A completion choice carries them; with echo, `logprobs` lists the prompt's with the request's
    # own number of alternatives (1 here), whatever `prompt_logprobs` asked for.
    own = TopLogprob(token_id=7, token="ab", logprob=-0.5)
    generated = (TokenLogprob(token_id=7, token="ab", logprob=-0.5, top=(own,)),)
    result = echoed(ChoiceResult(0, final("ab"), generated, prompt), "Say b c", top=1)
    body = text_completion_choices("cmpl-1", 7, "m", [result], None).model_dump(mode="json")
    choice = body["choices"][0]
    assert choice["prompt_logprobs"][1]["4"]["rank"] == 2 and len(choice["prompt_logprobs"][2]) == 3
    assert choice["logprobs"]["top_logprobs"][1:] == [{" a": -0.2, " b": -0.7}, {" a": -0.2, " c": -6.0}, {"ab": -0.5}]
    # A chat answer carries them once, at the top; answers without them do not have the key.
    chat = chat_completion_choices(RID, 1, "m", [ChoiceResult(0, final("ab"), None, prompt)], None)
    assert chat.model_dump(mode="json")["prompt_logprobs"][2]["3"]["rank"] == 40
    plain = chat_completion_choices(RID, 1, "m", [ChoiceResult(0, final("ab"), None)], None).model_dump(mode="json")
    assert "prompt_logprobs" not in plain
    no_prompt = text_completion_choices("cmpl-1", 7, "m", [ChoiceResult(0, final("ab"), generated)], None)
    assert "prompt_logprobs" not in no_prompt.model_dump(mode="json")["choices"][0]


def test_a_completion_stream_puts_the_prompts_token_ids_on_its_first_chunk_and_each_chunks_own() -> None:
    formatter = CompletionStreamFormatter(RID, 7, "m", include_usage=False, token_ids=True)
    admission = ReplyEvent(request_id=RID, kind=ReplyKind.DELTA, seq=0, prompt_token_ids=(3, 4))
    first = ReplyEvent(request_id=RID, kind=ReplyKind.DELTA, seq=1, text="He", token_ids=(9,))
    # The end-of-sequence token adds no text, yet its chunk goes (with its id).
    eos = ReplyEvent(request_id=RID, kind=ReplyKind.DELTA, seq=2, text="", token_ids=(2,))
    assert formatter.opening() == [] and formatter.delta(admission) == []
    chunks = decode(formatter.delta(first) + formatter.delta(eos) + formatter.finish(final("He")))
    choices = [c["choices"][0] for c in chunks]
    assert [(c["text"], c.get("prompt_token_ids"), c["token_ids"]) for c in choices] == [
        ("He", [3, 4], [9]), ("", None, [2]), ("", None, []),
    ]
    plain = CompletionStreamFormatter(RID, 7, "m", include_usage=False)
    (chunk,) = decode(plain.delta(first))
    assert "token_ids" not in chunk["choices"][0] and "prompt_token_ids" not in chunk["choices"][0]


def test_a_chat_stream_with_token_ids_opens_even_when_only_the_final_event_comes() -> None:
    formatter = ChatStreamFormatter(RID, 7, "m", include_usage=False, token_ids=True)
    assert formatter.opening() == []
    opening, last = decode(formatter.finish(final("Hi")))
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""} and "prompt_token_ids" not in opening
    assert (last["choices"][0]["delta"], last["choices"][0]["finish_reason"]) == ({"content": "Hi"}, "stop")
