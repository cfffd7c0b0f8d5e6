"""Prompt building with the real SmolLM2 tokenizer: chat template, continuation, length limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.worker.engine import ChatTurn, SamplingParams, WorkItem
from services.worker.prompt_encoding import PromptEncoder, PromptError
from shared.model_store import prepare_model, resolve_model


@pytest.fixture(scope="module")
def tokenizer(model_state_dir: Path):
    return AutoTokenizer.from_pretrained(prepare_model(resolve_model("smollm2"), model_state_dir).path)


def test_messages_get_the_chat_template_with_generation_prompt(tokenizer) -> None:
    item = WorkItem("r", messages=(ChatTurn("user", "hi"),), params=SamplingParams(max_new_tokens=4))
    encoded = PromptEncoder(tokenizer, 2048).encode(item)
    text = tokenizer.decode(encoded.ids)
    assert text.startswith("<|im_start|>system")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert encoded.budget == 4


def test_raw_prompt_is_tokenized_as_is(tokenizer) -> None:
    encoded = PromptEncoder(tokenizer, 2048).encode(WorkItem("r", prompt="hello world"))
    assert tokenizer.decode(encoded.ids) == "hello world"


def test_continuation_is_appended_and_counted(tokenizer) -> None:
    item = WorkItem(
        "r", messages=(ChatTurn("user", "hi"),), params=SamplingParams(max_new_tokens=10), continuation="Hello! How"
    )
    encoded = PromptEncoder(tokenizer, 2048).encode(item)
    assert tokenizer.decode(encoded.ids).endswith("<|im_start|>assistant\nHello! How")
    # No continuation_tokens given: the worker counts them itself.
    assert encoded.budget == 10 - len(tokenizer("Hello! How", add_special_tokens=False)["input_ids"])
    # Its own tokens, for the presence and frequency penalties: here also the end of the prompt's.
    assert tokenizer.decode(encoded.continuation_ids) == "Hello! How"
    assert list(encoded.continuation_ids) == encoded.ids[-len(encoded.continuation_ids) :]
    plain = PromptEncoder(tokenizer, 2048).encode(WorkItem("r", prompt="hi"))
    assert plain.continuation_ids == ()


def test_too_long_is_refused_with_numbers(tokenizer) -> None:
    encoder = PromptEncoder(tokenizer, 32)
    with pytest.raises(PromptError, match=r"prompt has 20 tokens and up to 13 more.*max_model_len of 32"):
        encoder.encode(WorkItem("r", prompt=" a" * 20, params=SamplingParams(max_new_tokens=13)))
    assert encoder.encode(WorkItem("r", prompt=" a" * 20, params=SamplingParams(max_new_tokens=12))).budget == 12


def test_empty_prompt_is_refused(tokenizer) -> None:
    with pytest.raises(PromptError, match="empty"):
        PromptEncoder(tokenizer, 2048).encode(WorkItem("r", prompt=""))


def test_token_ids_are_used_as_they_are_and_decoded(tokenizer) -> None:
    ids = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    item = WorkItem("r", prompt_token_ids=tuple(ids), params=SamplingParams(max_new_tokens=3))
    encoded = PromptEncoder(tokenizer, 2048).encode(item)
    assert (encoded.ids, encoded.budget, encoded.decoded) == (ids, 3, "The capital of France is")
    # A retry continues after what was delivered: its tokens follow the ids.
    params = SamplingParams(max_new_tokens=3)
    retry = WorkItem("r", prompt_token_ids=tuple(ids), params=params, continuation=" Paris", continuation_tokens=1)
    again = PromptEncoder(tokenizer, 2048).encode(retry)
    paris = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert (again.ids, again.continuation_ids, again.budget) == ([*ids, *paris], tuple(paris), 2)
    # Text prompts are not decoded (nothing to give back).
    assert PromptEncoder(tokenizer, 2048).encode(WorkItem("r", prompt="hi")).decoded is None


def test_token_ids_beyond_the_vocabulary_are_refused(tokenizer) -> None:
    encoder = PromptEncoder(tokenizer, 2048, vocab_size=100)
    with pytest.raises(PromptError, match="token id 100; this model's vocabulary has 100 tokens"):
        encoder.encode(WorkItem("r", prompt_token_ids=(5, 100)))
    with pytest.raises(PromptError, match="max_model_len of 4"):
        item = WorkItem("r", prompt_token_ids=(1, 2, 3), params=SamplingParams(max_new_tokens=2))
        PromptEncoder(tokenizer, 4).encode(item)
