"""The batcher's translation of a request in flight into the worker API's WorkItem, and of the
worker's deltas (their log probabilities) into what it publishes."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from services.batcher.dispatcher import BatchDispatcher, logprobs_from_proto, to_work_item
from services.batcher.metrics import BatcherMetrics
from services.batcher.request_state import RequestState
from services.worker.proto_convert import work_item_from_proto
from shared.protos import worker_pb2
from shared.records import (
    MAX_TOKEN_ID,
    MAX_TOP_LOGPROBS,
    MIN_LOGPROB,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    Priority,
    TokenLogprob,
)


def _state(params: GenerationParams, **progress: object) -> RequestState:
    request = GenerationRequest(id="req-1", model="m", prompt="Tell me", params=params)
    return RequestState(request, Priority.NORMAL, TopicPartition("lgc.requests.normal", 0), 7, **progress)  # type: ignore[arg-type]


def test_every_sampling_parameter_reaches_the_worker_as_it_was_sent() -> None:
    params = GenerationParams(
        max_new_tokens=40, temperature=0.5, top_p=0.9, top_k=12, stop=("END",), seed=11,
        repetition_penalty=1.25, presence_penalty=0.5, frequency_penalty=-1.5, logit_bias={50256: -100.0, 7: 2.5},
    )
    item = work_item_from_proto(to_work_item(_state(params)))
    sent = item.params
    assert (sent.max_new_tokens, sent.top_k, sent.stop, sent.seed) == (40, 12, ("END",), 11)
    # Float32 on the wire: these values are exact in binary, so they come back equal.
    assert (sent.temperature, sent.repetition_penalty, sent.presence_penalty, sent.frequency_penalty) == (
        0.5, 1.25, 0.5, -1.5,
    )
    assert sent.logit_bias == ((7, 2.5), (50256, -100.0))
    assert sent.top_p == pytest.approx(0.9)
    assert item.prompt == "Tell me" and item.continuation == ""


def test_a_retry_carries_the_text_already_delivered() -> None:
    item = work_item_from_proto(to_work_item(_state(GenerationParams(max_new_tokens=10), text="Once", tokens=2)))
    assert (item.continuation, item.continuation_tokens, item.remaining_tokens) == ("Once", 2, 8)
    assert item.params.seed is None and item.params.presence_penalty == 0.0 and item.params.logit_bias == ()


def test_logprob_flags_reach_the_worker() -> None:
    item = to_work_item(_state(GenerationParams(logprobs=True, top_logprobs=5)))
    assert (item.params.logprobs, item.params.top_logprobs) == (True, 5)
    plain = to_work_item(_state(GenerationParams()))
    assert (plain.params.logprobs, plain.params.top_logprobs) == (False, 0)


def test_prompt_logprobs_are_asked_for_until_a_worker_sent_them() -> None:
    state = _state(GenerationParams(prompt_logprobs=3))
    item = to_work_item(state)
    assert (item.params.prompt_logprobs, item.params.prompt_top_logprobs) == (True, 3)
    assert work_item_from_proto(item).params.prompt_logprobs == 3
    state.prompt_logprobs_received = True  # a retry after the first delta: not again
    assert to_work_item(state).params.prompt_logprobs is False
    plain = to_work_item(_state(GenerationParams()))
    assert (plain.params.prompt_logprobs, plain.params.prompt_top_logprobs) == (False, 0)


def test_a_prompt_of_token_ids_reaches_the_worker_as_ids() -> None:
    request = GenerationRequest(id="req-1", model="m", prompt_token_ids=(5, 0, 9))
    state = RequestState(request, Priority.NORMAL, TopicPartition("lgc.requests.normal", 0), 7)
    item = work_item_from_proto(to_work_item(state))
    assert (item.prompt, item.prompt_token_ids) == ("", (5, 0, 9))


def test_work_items_carry_the_ways_to_stop() -> None:
    item = to_work_item(_state(GenerationParams(ignore_eos=True, min_tokens=3, stop_token_ids=(2, 7))))
    assert (item.params.ignore_eos, item.params.min_tokens, list(item.params.stop_token_ids)) == (True, 3, [2, 7])
    plain = to_work_item(_state(GenerationParams()))
    assert (plain.params.ignore_eos, plain.params.min_tokens, list(plain.params.stop_token_ids)) == (False, 0, [])


def test_logprobs_from_the_worker_are_bounded_to_what_a_record_holds() -> None:
    entries = [
        worker_pb2.TokenLogprob(
            token_id=5, token="Hi", logprob=-0.25,
            top=[worker_pb2.TopLogprob(token_id=5, token="Hi", logprob=1e-7)]
            + [worker_pb2.TopLogprob(token_id=i, token=str(i), logprob=-1.0) for i in range(30)],
        ),
        worker_pb2.TokenLogprob(token_id=6, token="!", logprob=float("-inf")),
        worker_pb2.TokenLogprob(token_id=7, token="?", logprob=float("nan")),
        worker_pb2.TokenLogprob(token_id=8, token=".", logprob=-0.1, rank=3),
    ]
    first, inf, nan, rounded = logprobs_from_proto(entries)
    assert (first.rank, rounded.rank) == (None, 3)  # 0 on the wire: not computed
    assert (first.token_id, first.token, first.logprob) == (5, "Hi", -0.25)
    assert len(first.top) == MAX_TOP_LOGPROBS and first.top[0].logprob == 0.0  # float32 noise above 0
    assert inf.logprob == MIN_LOGPROB and nan.logprob == MIN_LOGPROB and inf.top == ()
    assert rounded.logprob == -0.1  # float32's -0.1 is -0.10000000149011612 widened


class _RecordingPublisher:
    """Stands in for ReplyPublisher: remembers what the dispatcher hands it."""

    def __init__(self) -> None:
        self.deltas: list[tuple[str, tuple[TokenLogprob, ...]]] = []
        self.prompt_deltas: list[tuple[TokenLogprob, ...]] = []
        self.token_ids: list[tuple[int, ...]] = []
        self.finals: list[tuple[FinishReason, int]] = []

    async def delta(
        self,
        state: RequestState,
        text: str,
        logprobs: tuple[TokenLogprob, ...] = (),
        prompt_logprobs: tuple[TokenLogprob, ...] = (),
        token_ids: tuple[int, ...] = (),
    ) -> None:
        self.deltas.append((text, tuple(logprobs)))
        self.prompt_deltas.append(tuple(prompt_logprobs))
        self.token_ids.append(tuple(token_ids))

    async def final(self, state: RequestState, reason: FinishReason, *, reply_text: str | None = None) -> None:
        self.finals.append((reason, state.tokens))


def _dispatcher(publisher: _RecordingPublisher) -> BatchDispatcher:
    # _on_delta needs only the publisher (metrics only once the request was dispatched).
    return BatchDispatcher(None, None, publisher, None, lambda _s: None, None)  # type: ignore[arg-type]


async def test_a_delta_hands_its_logprobs_to_the_publisher_only_when_asked_for() -> None:
    publisher = _RecordingPublisher()
    dispatcher = _dispatcher(publisher)
    asked = _state(GenerationParams(logprobs=True))
    not_asked = _state(GenerationParams())
    delta = worker_pb2.TokenDelta(
        text="Hi", tokens=1, logprobs=[worker_pb2.TokenLogprob(token_id=3, token="Hi", logprob=-0.5)]
    )
    await dispatcher._on_delta(asked, delta)  # noqa: SLF001 - the delta path on its own
    await dispatcher._on_delta(not_asked, delta)  # noqa: SLF001
    assert publisher.deltas == [
        ("Hi", (TokenLogprob(token_id=3, token="Hi", logprob=-0.5),)),
        ("Hi", ()),  # a worker that sends them unasked does not make replies bigger
    ]
    assert (asked.text, asked.tokens) == ("Hi", 1)


async def test_a_delta_hands_the_prompts_logprobs_on_once_and_only_when_asked_for() -> None:
    publisher = _RecordingPublisher()
    dispatcher = _dispatcher(publisher)
    asked = _state(GenerationParams(prompt_logprobs=0))
    not_asked = _state(GenerationParams())
    entries = [worker_pb2.TokenLogprob(token_id=1, token="A", logprob=0.0), worker_pb2.TokenLogprob(token_id=2, token="b")]
    delta = worker_pb2.TokenDelta(text="Hi", tokens=1, prompt_logprobs=entries)
    await dispatcher._on_delta(asked, delta)  # noqa: SLF001 - the delta path on its own
    await dispatcher._on_delta(asked, delta)  # noqa: SLF001 - a worker repeating them
    await dispatcher._on_delta(not_asked, delta)  # noqa: SLF001
    assert [[e.token_id for e in p] for p in publisher.prompt_deltas] == [[1, 2], [], []]
    assert asked.prompt_logprobs_received and not not_asked.prompt_logprobs_received


async def test_the_first_workers_decoding_of_a_token_prompt_is_kept() -> None:
    dispatcher = _dispatcher(_RecordingPublisher())
    request = GenerationRequest(id="req-1", model="m", prompt_token_ids=(5, 6))
    state = RequestState(request, Priority.NORMAL, TopicPartition("lgc.requests.normal", 0), 7)
    await dispatcher._on_delta(state, worker_pb2.TokenDelta(prompt_text="five six"))  # noqa: SLF001
    await dispatcher._on_delta(state, worker_pb2.TokenDelta(prompt_text="again"))  # noqa: SLF001 - a retry's worker
    assert (state.decoded_prompt, state.prompt_text, state.first_token_at) == ("five six", "five six", None)
    text_state = _state(GenerationParams())
    await dispatcher._on_delta(text_state, worker_pb2.TokenDelta(prompt_text="unasked"))  # noqa: SLF001
    assert (text_state.decoded_prompt, text_state.prompt_text) == (None, "Tell me")  # the request's own text


async def test_token_ids_are_asked_for_and_handed_on_only_when_asked_the_prompts_once() -> None:
    assert to_work_item(_state(GenerationParams(return_token_ids=True))).params.return_token_ids
    assert not to_work_item(_state(GenerationParams())).params.return_token_ids
    publisher = _RecordingPublisher()
    dispatcher = _dispatcher(publisher)
    asked, not_asked = _state(GenerationParams(return_token_ids=True)), _state(GenerationParams())
    admission = worker_pb2.TokenDelta(prompt_token_ids=[1, 2, 3])
    delta = worker_pb2.TokenDelta(text="Hi", tokens=2, token_ids=[9, 2**32 - 1])
    for state in (asked, not_asked):
        await dispatcher._on_delta(state, admission)  # noqa: SLF001 - the delta path on its own
        await dispatcher._on_delta(state, delta)  # noqa: SLF001
    await dispatcher._on_delta(asked, worker_pb2.TokenDelta(prompt_token_ids=[4]))  # noqa: SLF001 - a retry's worker
    assert publisher.token_ids == [(), (9, MAX_TOKEN_ID), (), (), ()]  # an id beyond the records' range is bounded
    assert (asked.worker_prompt_ids, not_asked.worker_prompt_ids) == ((1, 2, 3), ())
    assert asked.first_token_at is not None  # the admission delta alone is no first token (below)
    fresh = _state(GenerationParams(return_token_ids=True))
    await dispatcher._on_delta(fresh, admission)  # noqa: SLF001
    assert fresh.first_token_at is None


async def test_the_answer_counts_the_tokens_the_worker_generated_also_those_without_text() -> None:
    publisher = _RecordingPublisher()
    dispatcher = BatchDispatcher(None, None, publisher, BatcherMetrics(CollectorRegistry()), lambda _s: None, None)  # type: ignore[arg-type]
    # A retry continuing after 3 delivered tokens: the worker reports 2 with text, then ends with an
    # end-of-sequence token (no text, so on no delta) and counts 3 of its own.
    state = _state(GenerationParams())
    state.tokens = state.tokens_before_attempt = 3
    await dispatcher._on_delta(state, worker_pb2.TokenDelta(text=" a b", tokens=2))  # noqa: SLF001
    finished = worker_pb2.Finished(reason=worker_pb2.FINISH_REASON_STOP, completion_tokens=3, prompt_tokens=9)
    await dispatcher._on_finished(state, finished)  # noqa: SLF001
    assert publisher.finals == [(FinishReason.STOP, 6)]
