"""Records to subjects: answers from results, prompts from requests, guard off skipped, garbage refused."""

from __future__ import annotations

import pytest

from services.guardian.subjects import Subject, content_sha256, prompt_subject, response_subject
from shared.records import ChatMessage, GenerationRequest, GenerationResult, GuardMode, Priority


def test_a_result_gives_its_answer() -> None:
    result = GenerationResult(request_id="r-1", tenant="acme", model="m", priority=Priority.LOW, prompt="p", text="hi")
    assert response_subject(result.to_bytes()) == Subject("r-1", "acme", "response", "hi")
    off = result.model_copy(update={"guard": GuardMode.OFF})
    assert response_subject(off.to_bytes()) is None


def test_a_request_gives_its_prompt_or_chat_turns() -> None:
    raw = GenerationRequest(id="q-1", tenant="acme", model="m", prompt="Once upon")
    assert prompt_subject(raw.to_bytes()) == Subject("q-1", "acme", "prompt", "Once upon")
    chat = GenerationRequest(
        id="q-2", model="m", messages=(ChatMessage(role="system", content="be nice"), ChatMessage(role="user", content="hi"))
    )
    assert prompt_subject(chat.to_bytes()) == Subject("q-2", "default", "prompt", "system: be nice\nuser: hi")
    assert prompt_subject(raw.model_copy(update={"guard": GuardMode.OFF}).to_bytes()) is None
    # Token ids: nothing to judge here (no tokenizer); the answer's result carries the decoding.
    ids = GenerationRequest(id="q-3", model="m", prompt_token_ids=(1, 2))
    assert prompt_subject(ids.to_bytes()) is None


@pytest.mark.parametrize("data", [b"", b"{", b'{"request_id": "r"}', b"\xff\xfe"])
def test_garbage_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="invalid GenerationResult"):
        response_subject(data)
    with pytest.raises(ValueError, match="invalid GenerationRequest"):
        prompt_subject(data)


def test_content_hash_is_sha256_hex_and_takes_any_str() -> None:
    assert content_sha256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert len(content_sha256("\ud800 lone surrogate")) == 64
