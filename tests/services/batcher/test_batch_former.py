"""BatchFormer: grouping by parameters, bounded by size, token budget and max wait."""

from __future__ import annotations

from aiokafka import TopicPartition

from services.batcher.batch_former import BatchFormer
from services.batcher.request_state import RequestState
from shared.records import GenerationParams, GenerationRequest, Priority


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _state(n: int, *, priority: Priority = Priority.NORMAL, tokens: int = 8, temperature: float = 0.7, model: str = "m") -> RequestState:
    request = GenerationRequest(
        id=f"r{n}", model=model, prompt="hi", params=GenerationParams(max_new_tokens=tokens, temperature=temperature)
    )
    return RequestState(request=request, priority=priority, tp=TopicPartition("t", 0), offset=n)


def _ids(batches: list[list[RequestState]]) -> list[list[str]]:
    return [[s.id for s in b] for b in batches]


def test_a_full_batch_closes_at_once_and_the_rest_waits() -> None:
    clock = FakeClock()
    former = BatchFormer(max_size=3, token_budget=1_000, max_wait_s=0.5, clock=clock)
    closed = []
    for n in range(4):
        closed += former.add(_state(n))
    assert _ids(closed) == [["r0", "r1", "r2"]]
    assert len(former) == 1 and former.due() == []
    assert former.next_due_in() == 0.5


def test_a_partial_batch_goes_after_max_wait() -> None:
    clock = FakeClock()
    former = BatchFormer(max_size=8, token_budget=1_000, max_wait_s=0.5, clock=clock)
    former.add(_state(0))
    clock.now += 0.25
    former.add(_state(1))
    assert former.due() == []
    clock.now += 0.25
    assert _ids(former.due()) == [["r0", "r1"]]  # the first request's wait bounds the batch
    assert len(former) == 0 and former.next_due_in() is None


def test_groups_by_parameters_model_and_priority() -> None:
    former = BatchFormer(max_size=8, token_budget=1_000, max_wait_s=1, clock=FakeClock())
    for state in (
        _state(0), _state(1, temperature=0.1), _state(2), _state(3, model="other"),
        _state(4, priority=Priority.HIGH), _state(5, priority=Priority.LOW),
    ):
        former.add(state)
    batches = _ids(former.due(flush=True))
    assert sorted(map(sorted, batches)) == [["r0", "r2"], ["r1"], ["r3"], ["r4"], ["r5"]]
    assert batches[0] == ["r4"] and batches[-1] == ["r5"]  # high first, low last


def test_token_budget_splits_a_group() -> None:
    former = BatchFormer(max_size=8, token_budget=100, max_wait_s=1, clock=FakeClock())
    closed = former.add(_state(0, tokens=60)) + former.add(_state(1, tokens=30)) + former.add(_state(2, tokens=20))
    assert _ids(closed) == [["r0", "r1"]]
    closed = former.add(_state(3, tokens=500))  # alone over the budget: its own batch
    assert _ids(closed) == [["r2"]]
    assert _ids(former.due(flush=True)) == [["r3"]]


def test_zero_wait_dispatches_everything_at_once() -> None:
    former = BatchFormer(max_size=8, token_budget=1_000, max_wait_s=0, clock=FakeClock())
    former.add(_state(0))
    former.add(_state(1))
    assert _ids(former.due()) == [["r0", "r1"]]


def test_batches_of_a_model_with_a_free_worker_go_at_once() -> None:
    former = BatchFormer(max_size=8, token_budget=1_000, max_wait_s=10, clock=FakeClock())
    former.add(_state(0, model="idle"))
    former.add(_state(1, model="busy"))
    assert _ids(former.due(flush_models={"idle"})) == [["r0"]]
    assert len(former) == 1
