"""Joining deltas: first text at once, then every N tokens, the rest before the end."""

from __future__ import annotations

import pytest

from services.worker.delta_coalescing import DeltaCoalescer
from services.worker.engine import TextDelta, TokenLogprob


def feed(coalescer: DeltaCoalescer, deltas: list[TextDelta]) -> list[TextDelta | None]:
    return [coalescer.add(d) for d in deltas]


def test_interval_one_passes_every_delta_through() -> None:
    coalescer = DeltaCoalescer(1)
    deltas = [TextDelta("a", f"t{i}", 1) for i in range(4)]
    assert feed(coalescer, deltas) == deltas
    assert coalescer.flush("a") is None


def test_first_delta_at_once_then_every_n_tokens_then_the_rest() -> None:
    coalescer = DeltaCoalescer(3)
    sent = feed(coalescer, [TextDelta("a", f"t{i} ", 1) for i in range(8)])
    assert sent[0] == TextDelta("a", "t0 ", 1)
    assert sent[1:3] == [None, None]
    assert sent[3] == TextDelta("a", "t1 t2 t3 ", 3)
    assert sent[4:6] == [None, None]
    assert sent[6] == TextDelta("a", "t4 t5 t6 ", 3)
    assert sent[7] is None
    assert coalescer.flush("a") == TextDelta("a", "t7 ", 1)
    assert coalescer.flush("a") is None  # nothing is sent twice


def test_requests_are_held_apart() -> None:
    coalescer = DeltaCoalescer(2)
    assert coalescer.add(TextDelta("a", "a0", 1)) == TextDelta("a", "a0", 1)
    assert coalescer.add(TextDelta("b", "b0", 1)) == TextDelta("b", "b0", 1)
    assert coalescer.add(TextDelta("a", "a1", 1)) is None
    assert coalescer.add(TextDelta("b", "b1", 1)) is None
    assert coalescer.add(TextDelta("a", "a2", 1)) == TextDelta("a", "a1a2", 2)
    assert coalescer.flush("b") == TextDelta("b", "b1", 1)
    assert coalescer.flush("a") is None


def test_tokens_without_text_wait_for_their_text() -> None:
    """A partial character: tokens arrive before the text they make; no empty delta is sent."""
    coalescer = DeltaCoalescer(2)
    assert coalescer.add(TextDelta("a", "", 1)) is None  # not even the first
    assert coalescer.add(TextDelta("a", "é", 1)) == TextDelta("a", "é", 2)
    assert coalescer.add(TextDelta("a", "", 1)) is None
    assert coalescer.add(TextDelta("a", "", 1)) is None
    assert coalescer.add(TextDelta("a", "x", 1)) == TextDelta("a", "x", 3)


def test_an_interval_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        DeltaCoalescer(0)


def test_logprobs_travel_with_the_tokens_they_belong_to() -> None:
    first, second, third = (TokenLogprob(i, f"t{i}", -float(i)) for i in range(3))
    coalescer = DeltaCoalescer(2)
    assert coalescer.add(TextDelta("a", "t0", 1, (first,))) == TextDelta("a", "t0", 1, (first,))
    assert coalescer.add(TextDelta("a", "", 1, (second,))) is None
    assert coalescer.add(TextDelta("a", "t1t2", 1, (third,))) == TextDelta("a", "t1t2", 2, (second, third))
    # An end-of-sequence token adds no text; its log probability still leaves at the end.
    assert coalescer.add(TextDelta("a", "", 1, (first,))) is None
    assert coalescer.flush("a") == TextDelta("a", "", 1, (first,))


def test_what_is_about_the_prompt_leaves_at_once_with_what_is_held() -> None:
    coalescer = DeltaCoalescer(4)
    decoded = TextDelta("a", "", 0, prompt_text="the prompt")
    assert coalescer.add(decoded) == decoded  # before any token: nothing waits for it
    assert coalescer.add(TextDelta("a", "t0", 1)) == TextDelta("a", "t0", 1)
    assert coalescer.add(TextDelta("a", "t1", 1)) is None
    scored = (TokenLogprob(0, "A", 0.0),)
    # Prompt log probabilities (a worker sends them with a token) take the held text with them.
    assert coalescer.add(TextDelta("a", "t2", 1, (), scored)) == TextDelta("a", "t1t2", 2, (), scored)
    assert coalescer.add(TextDelta("a", "t3", 1)) is None
    assert coalescer.flush("a") == TextDelta("a", "t3", 1)


def test_token_ids_travel_with_their_tokens_and_the_prompts_leave_at_once() -> None:
    coalescer = DeltaCoalescer(4)
    prompt = TextDelta("a", "", 0, prompt_token_ids=(5, 6))
    assert coalescer.add(prompt) == prompt
    assert coalescer.add(TextDelta("a", "t0", 1, token_ids=(10,))) == TextDelta("a", "t0", 1, token_ids=(10,))
    assert coalescer.add(TextDelta("a", "", 1, token_ids=(11,))) is None
    assert coalescer.add(TextDelta("a", "t1", 1, token_ids=(12,))) is None
    # The end-of-sequence token adds no text; its id leaves with the rest at the end.
    assert coalescer.add(TextDelta("a", "", 1, token_ids=(2,))) is None
    assert coalescer.flush("a") == TextDelta("a", "t1", 3, token_ids=(11, 12, 2))
