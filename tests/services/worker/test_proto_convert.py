"""Edge conversion of protobuf messages: defaults, validation, and events back to protobuf."""

from __future__ import annotations

import math

import pytest

from services.worker.engine import (
    FailureCode,
    FinishReason,
    SequenceFailed,
    SequenceFinished,
    TextDelta,
    TokenLogprob,
    TopLogprob,
)
from services.worker.proto_convert import InvalidItemError, event_to_proto, work_item_from_proto
from shared.protos import worker_pb2


def proto_item(**params: object) -> worker_pb2.WorkItem:
    values: dict[str, object] = {"max_new_tokens": 4}
    values.update(params)
    return worker_pb2.WorkItem(request_id="r1", prompt="hi", params=worker_pb2.SamplingParams(**values))  # type: ignore[arg-type]


def test_zero_values_take_their_documented_defaults() -> None:
    item = work_item_from_proto(proto_item())
    p = item.params
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.seed) == (0.0, 1.0, 0, 1.0, None)
    assert (p.presence_penalty, p.frequency_penalty) == (0.0, 0.0) and not p.penalises_output
    assert p.logprobs is None
    assert item.deadline_unix is None and item.continuation == "" and item.messages == ()


def test_fields_are_carried_over() -> None:
    msg = worker_pb2.WorkItem(
        request_id="r2",
        messages=[worker_pb2.ChatMessage(role="user", content="hello")],
        params=worker_pb2.SamplingParams(
            max_new_tokens=9, temperature=0.5, top_p=0.9, top_k=5, stop=["\n"], seed=0, has_seed=True,
            repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=-2.0, logit_bias={9: 1.5, 2: -100.0},
        ),
        deadline_unix=1e9,
        continuation="abc",
        continuation_tokens=2,
    )
    item = work_item_from_proto(msg)
    assert item.messages[0].role == "user" and item.messages[0].content == "hello"
    assert item.params.seed == 0 and item.params.stop == ("\n",) and item.params.top_k == 5
    assert item.params.temperature == pytest.approx(0.5)
    assert (item.params.presence_penalty, item.params.frequency_penalty) == (0.5, -2.0)
    assert item.params.logit_bias == ((2, -100.0), (9, 1.5))  # in token order
    assert (item.deadline_unix, item.continuation, item.continuation_tokens) == (1e9, "abc", 2)
    assert item.remaining_tokens == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": math.inf}, "frequency_penalty"),
        ({"logit_bias": {5: 101.0}}, "logit_bias"),
        ({"logit_bias": {5: math.nan}}, "logit_bias"),
        ({"logit_bias": {i: 1.0 for i in range(1025)}}, "logit_bias"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"top_logprobs": 2}, "top_logprobs needs params.logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be at most 20"),
        ({"min_tokens": 5}, "min_tokens"),
        ({"stop_token_ids": list(range(1025))}, "stop_token_ids"),
    ],
)
def test_bad_params_are_rejected_with_a_reason(params: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidItemError, match=message):
        work_item_from_proto(proto_item(**params))


def test_item_without_prompt_or_messages_is_rejected() -> None:
    with pytest.raises(InvalidItemError, match="neither a prompt nor messages"):
        work_item_from_proto(worker_pb2.WorkItem(request_id="r", params=worker_pb2.SamplingParams(max_new_tokens=1)))


def test_events_to_proto() -> None:
    delta = event_to_proto(TextDelta("r", "hé", 2))
    assert (delta.request_id, delta.delta.text, delta.delta.tokens) == ("r", "hé", 2)
    finished = event_to_proto(SequenceFinished("r", FinishReason.CANCELLED, 3, 4, 5.0, 6.0))
    assert finished.finished.reason == worker_pb2.FINISH_REASON_CANCELLED
    assert (finished.finished.prompt_tokens, finished.finished.completion_tokens) == (3, 4)
    assert (finished.finished.ttft_ms, finished.finished.total_ms) == (5.0, 6.0)
    failed = event_to_proto(SequenceFailed("r", FailureCode.DEADLINE_EXCEEDED, "late"))
    assert failed.failed.code == worker_pb2.FAILURE_CODE_DEADLINE_EXCEEDED and failed.failed.message == "late"
    for code in FailureCode:
        assert event_to_proto(SequenceFailed("r", code, "")).failed.code != worker_pb2.FAILURE_CODE_UNSPECIFIED


def test_logprob_requests_become_the_number_of_alternatives() -> None:
    assert work_item_from_proto(proto_item(logprobs=True)).params.logprobs == 0
    assert work_item_from_proto(proto_item(logprobs=True, top_logprobs=20)).params.logprobs == 20


def test_a_deltas_logprobs_go_out_in_order_with_their_alternatives() -> None:
    entries = (
        TokenLogprob(5, "Hi", -0.25, (TopLogprob(5, "Hi", -0.25), TopLogprob(7, "Hey", -1.5))),
        TokenLogprob(2, "<|im_end|>", -9999.0),
    )
    delta = event_to_proto(TextDelta("r", "Hi", 2, entries)).delta
    assert [(e.token_id, e.token, e.logprob) for e in delta.logprobs] == [(5, "Hi", -0.25), (2, "<|im_end|>", -9999.0)]
    assert [(t.token_id, t.token, t.logprob) for t in delta.logprobs[0].top] == [(5, "Hi", -0.25), (7, "Hey", -1.5)]
    assert list(delta.logprobs[1].top) == []
    assert list(event_to_proto(TextDelta("r", "x", 1)).delta.logprobs) == []


def test_prompt_logprobs_are_asked_for_and_go_out_on_the_delta() -> None:
    assert work_item_from_proto(proto_item(prompt_logprobs=True, prompt_top_logprobs=4)).params.prompt_logprobs == 4
    assert work_item_from_proto(proto_item()).params.prompt_logprobs is None
    for bad in ({"prompt_top_logprobs": 2}, {"prompt_logprobs": True, "prompt_top_logprobs": 21}):
        with pytest.raises(InvalidItemError, match="prompt_top_logprobs"):
            work_item_from_proto(proto_item(**bad))
    prompt = (TokenLogprob(1, "The", 0.0), TokenLogprob(2, " cat", -3.5, (TopLogprob(3, " dog", -0.5),), 2))
    delta = event_to_proto(TextDelta("r", "", 1, (), prompt)).delta
    assert [(e.token_id, e.token, e.logprob) for e in delta.prompt_logprobs] == [(1, "The", 0.0), (2, " cat", -3.5)]
    assert [e.rank for e in delta.prompt_logprobs] == [0, 2]  # 0: none (the first token has no rank)
    assert [t.token for t in delta.prompt_logprobs[1].top] == [" dog"] and list(delta.logprobs) == []


def test_ways_to_stop_are_carried_over() -> None:
    params = work_item_from_proto(proto_item(ignore_eos=True, min_tokens=3, stop_token_ids=[9, 2, 9])).params
    assert (params.ignore_eos, params.min_tokens, params.stop_token_ids) == (True, 3, (2, 9))
    item = work_item_from_proto(
        worker_pb2.WorkItem(
            request_id="r", prompt="x", params=worker_pb2.SamplingParams(max_new_tokens=8, min_tokens=5),
            continuation="ab", continuation_tokens=2,
        )
    )
    assert item.remaining_min_tokens == 3  # the continuation's tokens count, as for max_new_tokens


def test_a_prompt_of_token_ids_comes_in_and_its_decoding_goes_out() -> None:
    params = worker_pb2.SamplingParams(max_new_tokens=1)
    item = work_item_from_proto(worker_pb2.WorkItem(request_id="r", prompt_token_ids=[4, 0, 9], params=params))
    assert (item.prompt, item.prompt_token_ids) == ("", (4, 0, 9))
    with pytest.raises(InvalidItemError, match="both a prompt and prompt_token_ids"):
        work_item_from_proto(worker_pb2.WorkItem(request_id="r", prompt="x", prompt_token_ids=[4], params=params))
    delta = event_to_proto(TextDelta("r", "", 0, prompt_text="four")).delta
    assert delta.HasField("prompt_text") and delta.prompt_text == "four"
    assert not event_to_proto(TextDelta("r", "x", 1)).delta.HasField("prompt_text")


def test_token_ids_are_asked_for_and_go_out_on_the_delta() -> None:
    params = worker_pb2.SamplingParams(max_new_tokens=1, return_token_ids=True)
    item = work_item_from_proto(worker_pb2.WorkItem(request_id="r", prompt="x", params=params))
    assert item.params.return_token_ids
    plain = worker_pb2.SamplingParams(max_new_tokens=1)
    unasked = work_item_from_proto(worker_pb2.WorkItem(request_id="r", prompt="x", params=plain))
    assert not unasked.params.return_token_ids
    delta = event_to_proto(TextDelta("r", "ab", 2, token_ids=(7, 8), prompt_token_ids=(1, 2, 3))).delta
    assert (list(delta.token_ids), list(delta.prompt_token_ids)) == ([7, 8], [1, 2, 3])
