"""The OpenAI request bodies: what is accepted, ignored, and refused (naming the parameter)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.gateway.errors import map_exception
from services.gateway.openai_protocol import ChatCompletionRequest, CompletionRequest

USER = [{"role": "user", "content": "hi"}]


def chat(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **extra})


def refused_param(model: type, body: dict[str, Any]) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    api = map_exception(caught.value)
    assert api.status == 400
    return api.param, api.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"function_call": "auto"}, "function_call"),
        ({"logprobs": "maybe"}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),  # OpenAI's own maximum is 128
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"logit_bias": {"50256": -101}}, "logit_bias"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"-5": 1}}, "logit_bias"),
        ({"logit_bias": {str(2**31): 1}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"stop_token_ids": list(range(65))}, "stop_token_ids"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"priority": "urgent"}, "priority"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_chat_refusals_name_the_parameter(extra: dict[str, Any], param: str) -> None:
    got, message = refused_param(ChatCompletionRequest, {"messages": USER, **extra})
    assert got == param, message


@pytest.mark.parametrize(
    ("message", "param", "needle"),
    [
        ({"role": "tool", "content": "x", "tool_call_id": "1"}, "messages[0].role", "tool calling"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "messages[0].content", "image_url"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}, "messages[0].tool_calls", "tool_calls"),
        ({"role": "user"}, "messages[0]", "needs 'content'"),
    ],
)
def test_message_refusals(message: dict[str, Any], param: str, needle: str) -> None:
    got, text = refused_param(ChatCompletionRequest, {"messages": [message]})
    assert got == param and needle in text


def test_neutral_values_of_unsupported_options_are_accepted() -> None:
    body = chat(
        n=1,
        logprobs=False,
        top_logprobs=0,
        response_format={"type": "text"},
        tools=[],
        tool_choice="none",
        logit_bias={},
        modalities=["text"],
        user="u",
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=True,
        stream_options=None,
    )
    assert body.n == 1


def test_logprobs_are_accepted_in_openai_and_vllm_ranges() -> None:
    assert (chat(logprobs=True).logprobs, chat(logprobs=True).top_logprobs) == (True, None)
    assert chat(logprobs=True, top_logprobs=20).top_logprobs == 20
    assert chat(logprobs=True, top_logprobs=0).top_logprobs == 0
    assert chat(logprobs=None, top_logprobs=None).logprobs is None
    # OpenAI accepts top_logprobs 0 without logprobs (it asks for nothing).
    assert chat(top_logprobs=0).top_logprobs == 0
    # Legacy completions: 0 to 20 (OpenAI stops at 5, vLLM at 20).
    assert [CompletionRequest.model_validate({"prompt": "x", "logprobs": n}).logprobs for n in (0, 5, 20)] == [0, 5, 20]


def test_top_logprobs_without_logprobs_says_what_is_missing() -> None:
    param, message = refused_param(ChatCompletionRequest, {"messages": USER, "top_logprobs": 3})
    assert param == "top_logprobs" and "'logprobs' must be true" in message


def test_text_parts_are_joined_and_assistant_may_have_no_content() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "bob"},
                {"role": "assistant", "content": None},
            ]
        }
    )
    assert [m.text() for m in body.messages] == ["ab", ""]


@pytest.mark.parametrize(
    ("extra", "param", "needle"),
    [
        ({"prompt": [1, -2, 3]}, "prompt", "token ids are integers from 0"),
        ({"prompt": [1, 2**31]}, "prompt", "token ids are integers from 0"),
        ({"prompt": [1, True]}, "prompt", "strings, or lists of token ids"),
        ({"prompt": [1.0, 2]}, "prompt", "strings, or lists of token ids"),
        ({"prompt": [[1, 2], [3, "4"]]}, "prompt", "prompt 1: token ids"),
        ({"prompt": [[1, 2], []]}, "prompt", "prompt 1 must not be empty"),
        ({"prompt": [[1], "a"]}, "prompt", "strings, or lists of token ids"),
        ({"prompt": [0] * 32_769}, "prompt", "at most 32768"),
        ({"prompt": [[1]] * 129}, "prompt", "at most 128 prompts"),
        ({"prompt": "x", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs", "not available with stream"),
        ({"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs", "20"),
        ({"prompt": []}, "prompt", "must not be empty"),
        ({"prompt": ["a", ""]}, "prompt", "must not be empty"),
        ({"prompt": ["a"] * 129}, "prompt", "at most 128 prompts"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "x", "best_of": 3}, "best_of", "best_of"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "20"),
        ({"prompt": "x", "logprobs": -1}, "logprobs", "0"),
        ({"prompt": "x", "suffix": "end"}, "suffix", "suffix"),
        ({"prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
        ({"prompt": "x", "n": 2, "best_of": 3}, "best_of", "best_of other than n (2)"),
        ({"prompt": "x", "n": 3, "best_of": 1}, "best_of", "best_of"),
        ({}, "prompt", "Missing"),
    ],
)
def test_completion_refusals(extra: dict[str, Any], param: str, needle: str) -> None:
    got, message = refused_param(CompletionRequest, extra)
    assert got == param and needle in message


def test_completion_prompt_forms() -> None:
    assert CompletionRequest.model_validate({"prompt": "a"}).prompt_list() == ("a",)
    assert CompletionRequest.model_validate({"prompt": ["b"], "echo": False, "best_of": 1}).prompt_list() == ("b",)
    several = CompletionRequest.model_validate({"prompt": ["b", "c", "b"], "echo": True, "n": 2})
    assert several.prompt_list() == ("b", "c", "b")
    assert several.echo is True
    # Token ids, as vLLM and OpenAI take them: one prompt, or several.
    assert CompletionRequest.model_validate({"prompt": [5, 0, 7]}).prompt_list() == ((5, 0, 7),)
    assert CompletionRequest.model_validate({"prompt": [[5], [6, 7]]}).prompt_list() == ((5,), (6, 7))


def test_several_choices_are_accepted_up_to_openais_maximum() -> None:
    assert chat(n=2).n == 2 and chat(n=128).n == 128
    assert chat().n is None  # absent: one choice
    completion = CompletionRequest.model_validate({"prompt": "x", "n": 3, "best_of": 3})
    assert (completion.n, completion.best_of) == (3, 3)  # best_of = n: every choice is returned
