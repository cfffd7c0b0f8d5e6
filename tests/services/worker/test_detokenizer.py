"""Incremental detokenization with the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.worker.detokenizer import IncrementalDetokenizer, TokenTexts
from shared.model_store import prepare_model, resolve_model


@pytest.fixture(scope="module")
def tokenizer(model_state_dir: Path):
    return AutoTokenizer.from_pretrained(prepare_model(resolve_model("smollm2"), model_state_dir).path)


TEXTS = [
    "Hello world, this is a test.",
    "Emoji 😀🎉 and accents: café, naïve, Ærø.",
    "中文字符测试，日本語のテキスト。",
    "  leading spaces\n\nand\ttabs  ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_decoded_text(tokenizer, text: str) -> None:
    prompt = tokenizer("Say:")["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detokenizer.add(i) for i in ids]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text
    # No delta ever carries half a character.
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_character_is_held_until_complete(tokenizer) -> None:
    ids = tokenizer("😀", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "the emoji must span several byte tokens for this test to mean anything"
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    deltas = [detokenizer.add(i) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1)
    assert deltas[-1] == "😀"


def test_flush_releases_an_unfinished_character(tokenizer) -> None:
    ids = tokenizer("😀", add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    assert detokenizer.add(ids[0]) == ""
    assert detokenizer.flush() == "\ufffd"


def test_special_tokens_are_not_emitted(tokenizer) -> None:
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    hello = tokenizer("Hi", add_special_tokens=False)["input_ids"]
    out = [detokenizer.add(i) for i in hello] + [detokenizer.add(tokenizer.eos_token_id)]
    assert "".join(out) == "Hi"


def test_long_generation_keeps_working(tokenizer) -> None:
    text = "word " * 400 + "é😀"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    out = "".join(detokenizer.add(i) for i in ids) + detokenizer.flush()
    assert out == text


def test_token_texts_name_single_tokens_as_vllm_does(tokenizer) -> None:
    names = TokenTexts(tokenizer)
    [hello] = tokenizer(" Hello", add_special_tokens=False)["input_ids"]
    assert names(hello) == " Hello"
    assert names(tokenizer.eos_token_id) == tokenizer.eos_token  # special tokens keep their names
    # One piece of a multi-byte character reads as U+FFFD.
    pieces = tokenizer("😀", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1 and names(pieces[0]) == "\ufffd"
    assert names(len(tokenizer) + 10) == ""  # an id the tokenizer does not know
