"""Fan-out of a request into its choices, and the merge of their events (no broker needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared.records import (
    FinishReason,
    GenerationParams,
    GenerationRequest,
    ReplyEvent,
    ReplyKind,
    Usage,
)

from services.gateway.errors import GatewayTimeoutError
from services.gateway.parallel_sampling import ChoiceStreams, child_id, child_requests, summed_usage
from services.gateway.request_translation import new_request_id


def request(seed: int | None = None, **params: object) -> GenerationRequest:
    return GenerationRequest(
        id=new_request_id("chatcmpl"),
        model="m",
        prompt="p",
        params=GenerationParams(seed=seed, temperature=0.9, **params),
        deadline=2e9,
    )


def delta(request_id: str, seq: int, text: str) -> ReplyEvent:
    return ReplyEvent(request_id=request_id, kind=ReplyKind.DELTA, seq=seq, text=text)


def final(request_id: str, seq: int, text: str, completion_tokens: int = 1, prompt_tokens: int = 4) -> ReplyEvent:
    return ReplyEvent(
        request_id=request_id,
        kind=ReplyKind.FINAL,
        seq=seq,
        text=text,
        finish_reason=FinishReason.STOP,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
    )


def test_children_have_distinct_valid_ids_and_seeds_seed_plus_i() -> None:
    parent = request(seed=5, max_new_tokens=8)
    children = child_requests(parent, 3)
    assert [c.id for c in children] == [f"{parent.id}.{i}" for i in range(3)]
    assert [c.params.seed for c in children] == [5, 6, 7]
    for child in children:
        # Valid records (model_copy does not validate): the id pattern and length hold.
        GenerationRequest.from_bytes(child.to_bytes())
        assert child.prompt == parent.prompt and child.deadline == parent.deadline
        assert child.created_at == parent.created_at and child.params.max_new_tokens == 8
    # The largest id the gateway makes, with OpenAI's largest n, fits the record's 128 characters.
    longest = child_id(new_request_id("chatcmpl"), 127)
    assert len(longest) <= 128
    GenerationRequest(id=longest, model="m", prompt="p")


def test_without_a_seed_each_child_draws_its_own() -> None:
    children = child_requests(request(seed=None), 4)
    assert [c.params.seed for c in children] == [None] * 4
    assert len({c.id for c in children}) == 4


def test_seeds_wrap_within_63_bits() -> None:
    children = child_requests(request(seed=2**63 - 2), 3)
    assert [c.params.seed for c in children] == [2**63 - 2, 2**63 - 1, 0]


def test_several_prompts_make_n_choices_each_numbered_prompt_by_prompt() -> None:
    parent = request(seed=5)
    children = child_requests(parent, 2, ("first", "second", "third"))
    assert [c.id for c in children] == [f"{parent.id}.{i}" for i in range(6)]
    assert [c.prompt for c in children] == ["first", "first", "second", "second", "third", "third"]
    # Each prompt's choices are seeded as that prompt alone with n = 2 would be.
    assert [c.params.seed for c in children] == [5, 6] * 3
    for child in children:
        GenerationRequest.from_bytes(child.to_bytes())


def test_prompts_of_token_ids_make_children_of_token_ids() -> None:
    children = child_requests(request(seed=None), 1, ((4, 5), "text", (6,)))
    assert [(c.prompt, c.prompt_token_ids) for c in children] == [(None, (4, 5)), ("text", None), (None, (6,))]
    for child in children:
        GenerationRequest.from_bytes(child.to_bytes())  # exactly one input each


def test_usage_counts_each_prompt_once_and_sums_the_completions() -> None:
    finals = {0: final("a", 1, "x", 3), 1: final("b", 1, "y", 5)}
    assert summed_usage(finals, 2) == Usage(prompt_tokens=4, completion_tokens=8)
    # Two prompts of 4 and 7 tokens, two choices each (one of the second still running).
    finals = {0: final("a", 1, "x", 3), 1: final("b", 1, "y", 5), 3: final("d", 1, "z", 2, prompt_tokens=7)}
    assert summed_usage(finals, 2) == Usage(prompt_tokens=11, completion_tokens=10)
    assert summed_usage({}, 1) == Usage()


class Scripted:
    """An event stream fed by the test; records whether its listener left before its end."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.queue: asyncio.Queue[ReplyEvent | Exception] = asyncio.Queue()
        self.started = False
        self.abandoned = False

    async def events(self) -> AsyncIterator[ReplyEvent]:
        self.started = True
        finished = False
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.terminal
                yield item
                if finished:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            # As an engine client's stream does: its listener left before the end, so it cancels.
            self.abandoned = not finished
            raise


async def test_events_are_interleaved_as_they_come() -> None:
    first, second = Scripted("r.0"), Scripted("r.1")
    merged = ChoiceStreams([first.events(), second.events()])
    try:
        second.queue.put_nowait(delta("r.1", 0, "b"))
        got = await merged.next()
        assert (got.index, got.event.text) == (1, "b")
        first.queue.put_nowait(delta("r.0", 0, "a"))
        first.queue.put_nowait(final("r.0", 1, "a"))
        assert [(e.index, e.event.kind) for e in [await merged.next(), await merged.next()]] == [
            (0, ReplyKind.DELTA),
            (0, ReplyKind.FINAL),
        ]
        second.queue.put_nowait(final("r.1", 1, "b"))
        assert (await merged.next()).index == 1
    finally:
        await merged.aclose()
    assert not first.abandoned and not second.abandoned  # both ended on their own


async def test_a_failing_choice_raises_and_closing_cancels_the_others() -> None:
    streams = [Scripted(f"r.{i}") for i in range(3)]
    merged = ChoiceStreams([s.events() for s in streams])
    streams[1].queue.put_nowait(GatewayTimeoutError("too late"))
    with pytest.raises(GatewayTimeoutError):
        await merged.next()
    await merged.aclose()
    assert [s.abandoned for s in streams] == [True, False, True]  # the siblings were stopped


async def test_nothing_is_read_before_the_first_next() -> None:
    streams = [Scripted(f"r.{i}") for i in range(2)]
    merged = ChoiceStreams([s.events() for s in streams])
    await asyncio.sleep(0)
    assert not any(s.started for s in streams)
    await merged.aclose()
    assert not any(s.started for s in streams)


async def test_a_stream_that_ends_without_a_final_event_is_a_failure() -> None:
    async def ends_early() -> AsyncIterator[ReplyEvent]:
        yield delta("r.0", 0, "a")

    merged = ChoiceStreams([ends_early()])
    try:
        assert (await merged.next()).event.text == "a"
        with pytest.raises(RuntimeError, match="without a final event"):
            await merged.next()
    finally:
        await merged.aclose()
