"""OpenAI bodies and gRPC messages -> GenerationRequest, with the gateway's limits."""

from __future__ import annotations

from typing import Any

import pytest

from shared.protos import gateway_pb2
from shared.records import GenerationParams, Priority

from services.gateway.errors import InvalidRequestError
from services.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from services.gateway.request_translation import (
    new_request_id,
    resolve_priority,
    translate_chat,
    translate_completion,
    translate_proto,
)
from services.gateway.settings import GatewaySettings

SETTINGS = GatewaySettings(
    gateway_max_tokens_limit=100, gateway_default_max_tokens=16, gateway_max_prompt_chars=50
)
USER = [{"role": "user", "content": "hi"}]


def chat(**body: Any):
    return translate_chat(ChatCompletionRequest.model_validate({"messages": USER, **body}), SETTINGS)


def test_chat_with_every_parameter() -> None:
    translated = translate_chat(
        ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [{"role": "developer", "content": "be nice"}, {"role": "user", "content": "hi"}],
                "max_completion_tokens": 40,
                "temperature": 0.3,
                "top_p": 0.8,
                "stop": "END",
                "seed": 11,
                "user": "someone",
                "stream": True,
                "stream_options": {"include_usage": True},
                "top_k": 12,
                "repetition_penalty": 1.3,
                "presence_penalty": 0.6,
                "frequency_penalty": -0.4,
                "logit_bias": {"50256": -100, "7": 2.5},
                "priority": "low",
            }
        ),
        SETTINGS,
        priority_header="high",
    )
    assert translated.requested_model == "m"
    assert translated.params == GenerationParams(
        max_new_tokens=40, temperature=0.3, top_p=0.8, top_k=12, stop=("END",), seed=11, repetition_penalty=1.3,
        presence_penalty=0.6, frequency_penalty=-0.4, logit_bias={50256: -100.0, 7: 2.5},
    )
    assert translated.priority is Priority.LOW  # the body wins over the header
    assert translated.stream and translated.include_usage
    request = translated.to_generation_request(request_id="chatcmpl-1", model="m", deadline=2e9)
    assert request.id == "chatcmpl-1" and request.deadline == 2e9 and request.prompt is None
    assert [(m.role, m.content) for m in request.messages or ()] == [("developer", "be nice"), ("user", "hi")]
    assert request.tenant == "default"


def test_defaults() -> None:
    translated = chat()
    assert translated.params == GenerationParams(max_new_tokens=16)
    assert translated.priority is Priority.NORMAL and not translated.stream and not translated.include_usage
    assert translated.requested_model is None


def test_default_max_tokens_is_capped_by_the_limit() -> None:
    settings = GatewaySettings(gateway_max_tokens_limit=8, gateway_default_max_tokens=256)
    body = ChatCompletionRequest.model_validate({"messages": USER})
    assert translate_chat(body, settings).params.max_new_tokens == 8


def test_priority_header_and_default() -> None:
    assert chat().priority is Priority.NORMAL
    body = ChatCompletionRequest.model_validate({"messages": USER})
    assert translate_chat(body, SETTINGS, priority_header=" HIGH ").priority is Priority.HIGH
    with pytest.raises(InvalidRequestError) as bad:
        translate_chat(body, SETTINGS, priority_header="urgent")
    assert bad.value.param == "X-LGC-Priority"
    assert resolve_priority(None, None, Priority.LOW) is Priority.LOW


def test_sampling_edge_cases() -> None:
    greedy = chat(top_p=0).params
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)  # nucleus of mass 0 = greedy
    assert chat(seed=-1).params.seed == 2**63 - 1  # folded into the non-negative range
    assert chat(seed=2**70).params.seed == 2**70 % 2**63
    assert chat(stop=["a", "b"]).params.stop == ("a", "b")
    assert chat(max_tokens=5, max_completion_tokens=5).params.max_new_tokens == 5


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"max_tokens": 101}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": 101}, "max_completion_tokens", "invalid_value"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens", "invalid_value"),
        ({"messages": [{"role": "user", "content": "x" * 51}]}, "messages", "context_length_exceeded"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"n": 17}, "n", "invalid_value"),  # above gateway_max_choices (16 by default)
    ],
)
def test_chat_limits(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        translate_chat(ChatCompletionRequest.model_validate({"messages": USER, **body}), SETTINGS)
    assert (refused.value.param, refused.value.code, refused.value.status) == (param, code, 400)


def test_completion() -> None:
    translated = translate_completion(
        CompletionRequest.model_validate({"prompt": ["Once"], "max_tokens": 3, "stream": True}), SETTINGS
    )
    assert translated.prompt == "Once" and translated.messages is None
    assert translated.params.max_new_tokens == 3 and translated.stream
    request = translated.to_generation_request(request_id="cmpl-1", model="m", deadline=2e9)
    assert request.prompt == "Once" and request.stream
    with pytest.raises(InvalidRequestError) as refused:
        translate_completion(CompletionRequest.model_validate({"prompt": "y" * 51}), SETTINGS)
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "prompt"


def test_proto() -> None:
    message = gateway_pb2.GenerateRequest(
        model="m",
        messages=[gateway_pb2.ChatMessage(role="user", content="hi")],
        max_tokens=9,
        temperature=0.7,
        has_temperature=True,
        top_p=0.95,
        top_k=3,
        stop=["x"],
        seed=2**64 - 1,
        has_seed=True,
        priority=gateway_pb2.PRIORITY_HIGH,
        repetition_penalty=1.1,
        presence_penalty=0.7,  # 0.699999988 as a float32: read back as 0.7
        frequency_penalty=-1.5,
        logit_bias={11: 0.3, 50256: -100},
    )
    translated = translate_proto(message, SETTINGS, stream=True)
    assert translated.params == GenerationParams(
        max_new_tokens=9, temperature=0.7, top_p=0.95, top_k=3, stop=("x",), seed=(2**64 - 1) % 2**63, repetition_penalty=1.1,
        presence_penalty=0.7, frequency_penalty=-1.5, logit_bias={11: 0.3, 50256: -100.0},
    )
    assert translated.priority is Priority.HIGH and translated.stream and translated.requested_model == "m"


def test_proto_zero_values_mean_defaults() -> None:
    translated = translate_proto(gateway_pb2.GenerateRequest(prompt="p"), SETTINGS, stream=False)
    assert translated.params == GenerationParams(max_new_tokens=16)  # temperature 1, top_p 1, no seed
    assert translated.priority is Priority.NORMAL and translated.requested_model is None
    greedy = translate_proto(gateway_pb2.GenerateRequest(prompt="p", has_temperature=True), SETTINGS, stream=False)
    assert greedy.params.temperature == 0.0  # has_temperature with 0 = greedy


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "messages"),
        ({"prompt": "p", "messages": [gateway_pb2.ChatMessage(role="user", content="x")]}, "messages"),
        ({"messages": [gateway_pb2.ChatMessage(role="tool", content="x")]}, "messages[0].role"),
        ({"prompt": "p", "temperature": float("nan"), "has_temperature": True}, "temperature"),
        ({"prompt": "p", "top_p": 1.5}, "top_p"),
        ({"prompt": "p", "repetition_penalty": -1}, "repetition_penalty"),
        ({"prompt": "p", "presence_penalty": 2.5}, "presence_penalty"),
        ({"prompt": "p", "frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"prompt": "p", "logit_bias": {5: 100.5}}, "logit_bias"),
        ({"prompt": "p", "logit_bias": {2**31: 1.0}}, "logit_bias"),
        ({"prompt": "p", "logit_bias": {i: 1.0 for i in range(301)}}, "logit_bias"),
        ({"prompt": "p", "top_k": 200_000}, "top_k"),
        ({"prompt": "p", "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"prompt": "p", "top_logprobs": 2}, "top_logprobs"),
        ({"prompt": "p", "stop_token_ids": list(range(65))}, "stop_token_ids"),
        ({"prompt": "p", "stop_token_ids": [2**31]}, "stop_token_ids"),
        ({"prompt": "p", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
        ({"prompt": "p", "stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"prompt": "p", "stop": [""]}, "stop"),
        ({"prompt": "p", "priority": 9}, "priority"),
        ({"prompt": "p", "max_tokens": 101}, "max_tokens"),
        ({"prompt": "p" * 51}, "prompt"),
    ],
)
def test_proto_refusals(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        translate_proto(gateway_pb2.GenerateRequest(**fields), SETTINGS, stream=False)
    assert refused.value.param == param


def test_logprobs_requests() -> None:
    asked = chat(logprobs=True, top_logprobs=4).params
    assert (asked.logprobs, asked.top_logprobs) == (True, 4)
    assert (chat(logprobs=True).params.top_logprobs, chat(logprobs=False).params.logprobs) == (0, False)

    def completion(**body: Any) -> GenerationParams:
        return translate_completion(CompletionRequest.model_validate({"prompt": "p", **body}), SETTINGS).params

    # Legacy `logprobs: N`: the tokens' log probabilities and the N most likely; 0 still asks.
    assert [(p.logprobs, p.top_logprobs) for p in (completion(logprobs=3), completion(logprobs=0), completion())] == [
        (True, 3), (True, 0), (False, 0),
    ]
    message = gateway_pb2.GenerateRequest(prompt="p", logprobs=True, top_logprobs=20)
    proto = translate_proto(message, SETTINGS, stream=False)
    assert (proto.params.logprobs, proto.params.top_logprobs) == (True, 20)


def test_request_ids_are_valid_record_ids() -> None:
    ids = {new_request_id("chatcmpl") for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("chatcmpl-") and len(i) == 9 + 32 for i in ids)


def test_choices_are_carried_within_the_gateways_limit() -> None:
    assert chat().n == 1 and chat(n=1).n == 1 and chat(n=16).n == 16
    strict = GatewaySettings(gateway_max_choices=2)
    body = CompletionRequest.model_validate({"prompt": "x", "n": 2})
    assert translate_completion(body, strict).n == 2
    with pytest.raises(InvalidRequestError) as refused:
        translate_completion(CompletionRequest.model_validate({"prompt": "x", "n": 3}), strict)
    assert refused.value.param == "n" and "at most 2" in refused.value.message
    # gRPC: 0 (unset) is one choice; the same limit.
    assert translate_proto(gateway_pb2.GenerateRequest(prompt="x"), SETTINGS, stream=False).n == 1
    assert translate_proto(gateway_pb2.GenerateRequest(prompt="x", n=2), strict, stream=False).n == 2
    with pytest.raises(InvalidRequestError) as refused:
        translate_proto(gateway_pb2.GenerateRequest(prompt="x", n=3), strict, stream=False)
    assert refused.value.param == "n"


def test_several_prompts_and_echo() -> None:
    body = CompletionRequest.model_validate({"prompt": ["a", "bb", "a"], "n": 2, "echo": True})
    translated = translate_completion(body, SETTINGS)
    assert translated.prompt == "a" and translated.prompts == ("a", "bb", "a")
    assert translated.n == 2 and translated.choice_count == 6 and translated.echo
    assert translated.params.prompt_logprobs is None  # echo alone asks for no log probabilities
    scored = translate_completion(CompletionRequest.model_validate({"prompt": "a", "echo": True, "logprobs": 2}), SETTINGS)
    assert (scored.params.logprobs, scored.params.top_logprobs, scored.params.prompt_logprobs) == (True, 2, 2)
    plain = translate_completion(CompletionRequest.model_validate({"prompt": "a", "logprobs": 2}), SETTINGS)
    assert plain.params.prompt_logprobs is None
    one = translate_completion(CompletionRequest.model_validate({"prompt": ["a"], "n": 3}), SETTINGS)
    assert one.prompts == () and one.choice_count == 3 and not one.echo
    assert chat(n=2).choice_count == 2
    # The limit counts every choice of every prompt; each prompt has the size limit.
    strict = GatewaySettings(gateway_max_choices=4)
    with pytest.raises(InvalidRequestError) as refused:
        translate_completion(body, strict)
    assert refused.value.param == "prompt" and "make 6" in refused.value.message
    with pytest.raises(InvalidRequestError) as refused:
        translate_completion(CompletionRequest.model_validate({"prompt": ["a", "y" * 51]}), SETTINGS)
    assert refused.value.code == "context_length_exceeded"


def test_vllm_ways_to_stop() -> None:
    asked = chat(ignore_eos=True, min_tokens=3, stop_token_ids=[2, 7]).params
    assert (asked.ignore_eos, asked.min_tokens, asked.stop_token_ids) == (True, 3, (2, 7))
    plain = chat().params
    assert (plain.ignore_eos, plain.min_tokens, plain.stop_token_ids) == (False, 0, ())
    completion = translate_completion(
        CompletionRequest.model_validate({"prompt": "p", "max_tokens": 8, "min_tokens": 8, "ignore_eos": True}),
        SETTINGS,
    )
    assert (completion.params.min_tokens, completion.params.ignore_eos) == (8, True)
    # min_tokens is checked against the length the request gets, the gateway's default included.
    with pytest.raises(InvalidRequestError) as refused:
        chat(min_tokens=SETTINGS.gateway_default_max_tokens + 1)
    assert refused.value.param == "min_tokens"
    proto = translate_proto(
        gateway_pb2.GenerateRequest(prompt="p", ignore_eos=True, min_tokens=2, stop_token_ids=[5]), SETTINGS, stream=False
    )
    assert (proto.params.ignore_eos, proto.params.min_tokens, proto.params.stop_token_ids) == (True, 2, (5,))


def test_prompts_of_token_ids() -> None:
    one = translate_completion(CompletionRequest.model_validate({"prompt": [5, 6], "echo": True}), SETTINGS)
    assert (one.prompt, one.prompt_token_ids, one.prompts, one.choice_count) == (None, (5, 6), (), 1)
    record = one.to_generation_request(request_id="cmpl-1", model="m", deadline=1e10)
    assert (record.prompt, record.prompt_token_ids) == (None, (5, 6))
    several = translate_completion(CompletionRequest.model_validate({"prompt": [[5], [6, 7]], "n": 2}), SETTINGS)
    assert (several.prompt_token_ids, several.prompts, several.choice_count) == ((5,), ((5,), (6, 7)), 4)
    # Ids count as ids, not characters, against the prompt size limit: the schema bounds them.
    tight = GatewaySettings(gateway_max_prompt_chars=3)
    assert translate_completion(CompletionRequest.model_validate({"prompt": [1] * 10}), tight).prompt_token_ids


def test_prompt_logprobs_are_asked_for_as_many_alternatives_as_the_larger_request() -> None:
    assert chat(prompt_logprobs=3).params.prompt_logprobs == 3
    assert chat().params.prompt_logprobs is None

    def completion(**body: object) -> int | None:
        translated = translate_completion(CompletionRequest.model_validate({"prompt": "a", **body}), SETTINGS)
        return translated.params.prompt_logprobs

    assert completion(prompt_logprobs=0) == 0
    assert completion(echo=True, logprobs=1, prompt_logprobs=4) == 4
    assert completion(echo=True, logprobs=5, prompt_logprobs=2) == 5
    assert completion(logprobs=5, prompt_logprobs=2) == 2  # without echo, `logprobs` is the answer's only
