"""Records validate what they promise and round-trip through bytes."""

import json

import pytest
from pydantic import ValidationError

from shared.records import (
    MAX_PROMPT_TOKEN_IDS,
    RECORD_TYPES,
    SCHEMA_VERSION,
    Cancel,
    ChatMessage,
    ErrorCode,
    ErrorInfo,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    ReplyEvent,
    ReplyKind,
    TokenLogprob,
    TopLogprob,
    Usage,
)


def _request(**kw):
    base = {"id": "req-1", "model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base.update(kw)
    return GenerationRequest.model_validate(base)


def test_request_round_trips_through_bytes() -> None:
    req = _request(params={"max_new_tokens": 7, "stop": ["\n"], "seed": 3}, stream=True, reply_to="lgc.replies.g1")
    again = GenerationRequest.from_bytes(req.to_bytes())
    assert again == req
    assert json.loads(req.to_bytes())["v"] == SCHEMA_VERSION


def test_a_prompt_of_token_ids_is_the_third_kind_of_input() -> None:
    request = GenerationRequest(id="r", model="m", prompt_token_ids=(3, 0, 2**31 - 1))
    assert GenerationRequest.from_bytes(request.to_bytes()).prompt_token_ids == (3, 0, 2**31 - 1)
    assert request.prompt_as_text() == ""  # nothing outside the workers decodes them
    for extra in ({"prompt": "p"}, {"messages": (ChatMessage(role="user", content="x"),)}):
        with pytest.raises(ValidationError, match="exactly one"):
            GenerationRequest(id="r", model="m", prompt_token_ids=(3,), **extra)
    for bad in ((), (-1,), (2**31,), (0,) * (MAX_PROMPT_TOKEN_IDS + 1)):
        with pytest.raises(ValidationError):
            GenerationRequest(id="r", model="m", prompt_token_ids=bad)
    turns = (ChatMessage(role="user", content="x"), ChatMessage(role="assistant", content="y"))
    chat = GenerationRequest(id="r", model="m", messages=turns)
    assert chat.prompt_as_text() == "user: x\nassistant: y"
    # Its decoding comes back on a delta only.
    assert ReplyEvent(request_id="r", kind=ReplyKind.DELTA, seq=0, prompt_text="three").prompt_text == "three"
    with pytest.raises(ValidationError, match="prompt_text"):
        ReplyEvent(request_id="r", kind=ReplyKind.FINAL, seq=1, finish_reason=FinishReason.STOP, prompt_text="x")


def test_exactly_one_of_messages_and_prompt() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        GenerationRequest(id="a", model="m")
    with pytest.raises(ValidationError, match="exactly one"):
        GenerationRequest(id="a", model="m", prompt="x", messages=(ChatMessage(role="user", content="y"),))
    assert GenerationRequest(id="a", model="m", prompt="x").prompt == "x"


@pytest.mark.parametrize(
    "params",
    [
        {"max_new_tokens": 0},
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"top_p": 0},
        {"top_k": -1},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"repetition_penalty": 0},
        {"presence_penalty": 2.1},
        {"frequency_penalty": -3},
        {"logit_bias": {"5": 100.5}},
        {"logit_bias": {"-1": 1}},
        {"logit_bias": {str(2**31): 1}},
        {"logit_bias": {str(i): 1 for i in range(301)}},
        {"logprobs": True, "top_logprobs": 21},
        {"top_logprobs": 2},
        {"max_new_tokens": 4, "min_tokens": 5},
        {"stop_token_ids": [-1]},
        {"stop_token_ids": list(range(65))},
    ],
)
def test_out_of_range_params_are_refused(params) -> None:
    with pytest.raises(ValidationError):
        GenerationParams.model_validate(params)


def test_bad_ids_and_reply_topics_are_refused() -> None:
    with pytest.raises(ValidationError):
        _request(id="has space")
    with pytest.raises(ValidationError):
        _request(reply_to="bad topic/name")


def test_newer_version_is_refused_and_unknown_fields_ignored() -> None:
    raw = json.loads(_request().to_bytes())
    raw["some_future_field"] = 1
    assert GenerationRequest.model_validate(raw).id == "req-1"
    raw["v"] = SCHEMA_VERSION + 1
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate(raw)


def test_malformed_bytes_raise_validation_error() -> None:
    for data in (b"", b"{", b"[]", b"\xff\xfe", b'{"id": 5}'):
        with pytest.raises(ValidationError):
            GenerationRequest.from_bytes(data)


def test_expired() -> None:
    req = _request(deadline=100.0)
    assert req.expired(at=100.0)
    assert not req.expired(at=99.9)
    assert not _request().expired()


def test_reply_event_consistency() -> None:
    with pytest.raises(ValidationError):
        ReplyEvent(request_id="r", kind=ReplyKind.ERROR, seq=0)
    with pytest.raises(ValidationError):
        ReplyEvent(request_id="r", kind=ReplyKind.FINAL, seq=0)
    final = ReplyEvent(request_id="r", kind=ReplyKind.FINAL, seq=3, text="ok", finish_reason=FinishReason.STOP,
                       usage=Usage(prompt_tokens=2, completion_tokens=1))
    assert final.terminal and final.usage.total_tokens == 3
    err = ReplyEvent(request_id="r", kind=ReplyKind.ERROR, seq=0,
                     error=ErrorInfo(code=ErrorCode.CANCELLED, message="x"))
    assert ReplyEvent.from_bytes(err.to_bytes()).error.code is ErrorCode.CANCELLED
    assert not ReplyEvent(request_id="r", kind=ReplyKind.DELTA, seq=0, text="a").terminal


def test_group_key_ignores_length_only() -> None:
    a = GenerationParams(max_new_tokens=5, temperature=0)
    b = GenerationParams(max_new_tokens=50, temperature=0)
    c = GenerationParams(max_new_tokens=5, temperature=0.7)
    assert a.group_key() == b.group_key() != c.group_key()
    # Log probabilities are per sequence on the worker: requests that ask share batches with others.
    assert GenerationParams(max_new_tokens=5, temperature=0, logprobs=True, top_logprobs=3).group_key() == a.group_key()
    # So are the ways to stop (the worker ends each sequence on its own).
    stops = {"ignore_eos": True, "min_tokens": 2, "stop_token_ids": (7,)}
    assert GenerationParams(max_new_tokens=5, temperature=0, **stops).group_key() == a.group_key()
    for penalty in ({"presence_penalty": 0.5}, {"frequency_penalty": 0.5}, {"logit_bias": {7: 1.0}}):
        assert GenerationParams(max_new_tokens=5, temperature=0, **penalty).group_key() != a.group_key()


def test_logit_bias_keys_are_token_ids_as_json_strings() -> None:
    params = GenerationParams.model_validate_json('{"logit_bias": {"50256": -100, "7": 2.5}}')
    assert params.logit_bias == {50256: -100.0, 7: 2.5}
    assert GenerationParams.model_validate_json(params.model_dump_json()) == params
    hash(params.group_key())  # usable as a batching key


def test_every_record_type_exports_a_schema_with_version() -> None:
    for name, model in RECORD_TYPES.items():
        schema = model.model_json_schema()
        assert "v" in schema["properties"], name
        assert schema["properties"]["v"]["maximum"] == SCHEMA_VERSION
    assert Cancel(request_id="x").reason == "client_disconnected"


def test_logprobs_travel_on_deltas_only_and_round_trip() -> None:
    entry = TokenLogprob(token_id=5, token=" Paris", logprob=-0.5, top=(TopLogprob(token_id=5, token=" Paris", logprob=-0.5),))
    delta = ReplyEvent(request_id="r", kind=ReplyKind.DELTA, seq=0, text=" Paris", logprobs=(entry,))
    assert ReplyEvent.from_bytes(delta.to_bytes()).logprobs == (entry,)
    with pytest.raises(ValidationError, match="only 'delta' events carry 'logprobs'"):
        ReplyEvent(request_id="r", kind=ReplyKind.FINAL, seq=1, finish_reason=FinishReason.STOP, logprobs=(entry,))
    with pytest.raises(ValidationError):
        TokenLogprob(token_id=5, token="x", logprob=0.5)  # a probability above 1
    with pytest.raises(ValidationError):
        TopLogprob(token_id=5, token="x", logprob=float("-inf"))  # clamped by the producer, never -inf
