"""The simulated backend: rate, max tokens, stop strings, cancellation, deadlines, capacity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from services.worker.engine import (
    ChatTurn,
    EngineEvent,
    FailureCode,
    FinishReason,
    SamplingParams,
    SequenceFailed,
    SequenceFinished,
    TextDelta,
    WorkItem,
)
from services.worker.settings import WorkerSettings
from services.worker.simulated_engine import SIMULATED_MODEL_NAME, SimulatedEngine
from tests.services.worker.engine_runs import run_item


def make_settings(**overrides: object) -> WorkerSettings:
    values: dict[str, object] = {
        "worker_backend": "simulated",
        "simulated_tokens_per_s": 200.0,
        "simulated_ttft_ms": 20.0,
        "worker_max_batch_size": 4,
    }
    values.update(overrides)
    return WorkerSettings(**values)  # type: ignore[arg-type]


async def started(settings: WorkerSettings) -> SimulatedEngine:
    engine = SimulatedEngine(settings)
    await engine.start()
    return engine


async def test_info_says_simulated() -> None:
    engine = await started(make_settings())
    assert engine.info.simulated is True
    assert engine.info.model == SIMULATED_MODEL_NAME
    assert engine.info.backend == "simulated"
    assert engine.info.max_batch_size == 4


async def test_emits_max_new_tokens_at_the_configured_rate() -> None:
    engine = await started(make_settings(simulated_tokens_per_s=100.0, simulated_ttft_ms=50.0))
    began = time.monotonic()
    result = await run_item(engine, WorkItem("r1", prompt="hello there world", params=SamplingParams(max_new_tokens=10)))
    elapsed = time.monotonic() - began
    end = result.end
    assert isinstance(end, SequenceFinished)
    assert end.reason is FinishReason.LENGTH
    assert end.completion_tokens == 10
    assert end.prompt_tokens == 3
    assert result.text == " ".join(f"tok{i}" for i in range(10))
    assert sum(d.tokens for d in result.deltas) == 10
    # 50 ms to the first token, then 9 gaps of 10 ms: about 0.14 s.
    assert 0.13 <= elapsed < 2.0
    assert 45 <= end.ttft_ms < 1000


async def test_stop_string_ends_before_it_and_is_not_emitted() -> None:
    engine = await started(make_settings())
    params = SamplingParams(max_new_tokens=20, stop=("tok3",))
    result = await run_item(engine, WorkItem("r1", prompt="x", params=params))
    assert result.text == "tok0 tok1 tok2 "
    assert isinstance(result.end, SequenceFinished)
    assert result.end.reason is FinishReason.STOP
    assert result.end.completion_tokens == 4


async def test_cancel_stops_a_running_sequence() -> None:
    engine = await started(make_settings(simulated_tokens_per_s=20.0))
    queue: asyncio.Queue = asyncio.Queue()
    handle = engine.submit(WorkItem("r1", prompt="x", params=SamplingParams(max_new_tokens=1000)), queue.put_nowait)
    first = await asyncio.wait_for(queue.get(), 5)
    assert isinstance(first, TextDelta)
    assert engine.running == 1
    assert engine.cancel(handle) is True
    events = [first]
    while not isinstance(events[-1], SequenceFinished):
        events.append(await asyncio.wait_for(queue.get(), 5))
    assert events[-1].reason is FinishReason.CANCELLED
    assert events[-1].completion_tokens < 1000
    await asyncio.sleep(0)
    assert engine.running == 0
    assert engine.cancel(handle) is False


async def test_cancel_requests_by_id() -> None:
    engine = await started(make_settings(simulated_tokens_per_s=10.0))
    task = asyncio.create_task(run_item(engine, WorkItem("abc", prompt="x", params=SamplingParams(max_new_tokens=500))))
    await asyncio.sleep(0.05)
    assert engine.cancel_requests(["abc", "unknown"]) == 1
    result = await asyncio.wait_for(task, 5)
    assert isinstance(result.end, SequenceFinished) and result.end.reason is FinishReason.CANCELLED


async def test_deadline_fails_the_sequence() -> None:
    engine = await started(make_settings(simulated_tokens_per_s=20.0))
    item = WorkItem("r1", prompt="x", params=SamplingParams(max_new_tokens=1000), deadline_unix=time.time() + 0.3)
    began = time.monotonic()
    result = await run_item(engine, item)
    assert isinstance(result.end, SequenceFailed)
    assert result.end.code is FailureCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 2.0
    assert 1 <= len(result.deltas) <= 8


async def test_capacity_makes_others_wait() -> None:
    engine = await started(make_settings(worker_max_batch_size=2, simulated_tokens_per_s=50.0, simulated_ttft_ms=0))
    items = [WorkItem(f"r{i}", prompt="x", params=SamplingParams(max_new_tokens=5)) for i in range(4)]
    tasks = [asyncio.create_task(run_item(engine, item)) for item in items]
    await asyncio.sleep(0.03)
    assert engine.running == 2
    assert engine.waiting == 2
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r.end, SequenceFinished) and r.end.completion_tokens == 5 for r in results)
    # The last two started only once the first two were done.
    assert min(r.end.ttft_ms for r in results[2:]) > max(r.end.ttft_ms for r in results[:2]) + 50
    assert engine.running == 0 and engine.waiting == 0


async def test_continuation_counts_against_max_new_tokens() -> None:
    engine = await started(make_settings())
    item = WorkItem("r1", prompt="x", params=SamplingParams(max_new_tokens=5), continuation="tok0 tok1", continuation_tokens=2)
    result = await run_item(engine, item)
    assert item.continuation + result.text == "tok0 tok1 tok2 tok3 tok4"
    assert isinstance(result.end, SequenceFinished) and result.end.completion_tokens == 3


async def test_too_long_fails_with_invalid_request() -> None:
    engine = await started(make_settings(worker_max_model_len=16))
    messages = (ChatTurn("user", "one two three"),)
    result = await run_item(engine, WorkItem("r1", messages=messages, params=SamplingParams(max_new_tokens=16)))
    assert isinstance(result.end, SequenceFailed)
    assert result.end.code is FailureCode.INVALID_REQUEST
    assert "max_model_len" in result.end.message


async def test_abort_all_and_stop_fail_with_overloaded() -> None:
    engine = await started(make_settings(worker_max_batch_size=1, simulated_tokens_per_s=10.0))
    tasks = [
        asyncio.create_task(run_item(engine, WorkItem(f"r{i}", prompt="x", params=SamplingParams(max_new_tokens=100))))
        for i in range(2)
    ]
    await asyncio.sleep(0.05)
    await engine.stop()
    results = await asyncio.gather(*tasks)
    assert [type(r.end) for r in results] == [SequenceFailed, SequenceFailed]
    assert all(r.end.code is FailureCode.OVERLOADED for r in results)
    after = await run_item(engine, WorkItem("late", prompt="x"))
    assert isinstance(after.end, SequenceFailed) and after.end.code is FailureCode.OVERLOADED


@pytest.mark.parametrize("count", [200])
async def test_many_sequences_do_not_spin(count: int) -> None:
    """Many sequences waiting between tokens: the engine's thread is idle while their timers run.

    The CPU is measured only in a window where no token is due (all first tokens are out and the
    next ones come 2 s later), so the real work of starting and ending sequences, which a slow CI
    machine does slowly, is not counted; a busy loop or a polling timer would be.
    """
    engine = await started(make_settings(worker_max_batch_size=count, simulated_tokens_per_s=0.5, simulated_ttft_ms=0))
    first_tokens = 0
    all_started = asyncio.Event()

    def counting(put: Callable[[EngineEvent], None]) -> Callable[[EngineEvent], None]:
        def on_event(event: EngineEvent) -> None:
            nonlocal first_tokens
            put(event)
            if isinstance(event, TextDelta) and event.text == "tok0":
                first_tokens += 1
                if first_tokens == count:
                    all_started.set()

        return on_event

    queues: list[asyncio.Queue[EngineEvent]] = []
    for i in range(count):
        queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        queues.append(queue)
        engine.submit(WorkItem(f"r{i}", prompt="x", params=SamplingParams(max_new_tokens=2)), counting(queue.put_nowait))
    async with asyncio.timeout(30):
        await all_started.wait()
    cpu_before = time.thread_time()
    wall_before = time.monotonic()
    await asyncio.sleep(0.5)
    cpu = time.thread_time() - cpu_before
    wall = time.monotonic() - wall_before
    assert cpu < wall * 0.1, f"{cpu:.3f} s CPU in {wall:.3f} s with every sequence waiting on its timer"
    ends: list[EngineEvent] = []
    async with asyncio.timeout(30):
        for queue in queues:
            while isinstance(event := await queue.get(), TextDelta):
                pass
            ends.append(event)
    assert all(isinstance(e, SequenceFinished) and e.completion_tokens == 2 for e in ends)


async def test_logprobs_are_reported_as_certain_and_labelled_by_shape_only() -> None:
    engine = await started(make_settings())
    params = SamplingParams(max_new_tokens=4, stop=("tok3",), logprobs=2)
    result = await run_item(engine, WorkItem("r1", prompt="x", params=params))
    entries = [e for d in result.deltas for e in d.logprobs]
    # Four tokens generated (the stop string's too), each certain and its own only alternative.
    assert [(e.token_id, e.token, e.logprob) for e in entries] == [
        (0, "tok0", 0.0), (1, " tok1", 0.0), (2, " tok2", 0.0), (3, " tok3", 0.0),
    ]
    assert all(len(e.top) == 1 and e.top[0].token_id == e.token_id for e in entries)
    assert all(len(d.logprobs) == d.tokens for d in result.deltas)
    plain = await run_item(engine, WorkItem("r2", prompt="x", params=SamplingParams(max_new_tokens=2)))
    assert all(d.logprobs == () for d in plain.deltas)


async def test_prompt_logprobs_are_one_certain_entry_per_word_on_the_first_delta() -> None:
    engine = await started(make_settings())
    params = SamplingParams(max_new_tokens=3, prompt_logprobs=1)
    result = await run_item(engine, WorkItem("r1", prompt="the quick fox", params=params))
    first, *rest = result.deltas
    assert [(e.token_id, e.token, e.logprob, len(e.top)) for e in first.prompt_logprobs] == [
        (0, "the", 0.0, 0), (1, " quick", 0.0, 1), (2, " fox", 0.0, 1),
    ]
    assert rest and all(d.prompt_logprobs == () for d in rest)
    plain = await run_item(engine, WorkItem("r2", prompt="x", params=SamplingParams(max_new_tokens=2)))
    assert all(d.prompt_logprobs == () for d in plain.deltas)


async def test_stop_token_ids_end_at_their_token_after_min_tokens() -> None:
    engine = await started(make_settings())
    stopped = await run_item(engine, WorkItem("r1", prompt="x", params=SamplingParams(max_new_tokens=9, stop_token_ids=(2,))))
    assert isinstance(stopped.end, SequenceFinished) and stopped.end.reason is FinishReason.STOP
    assert (stopped.text, stopped.end.completion_tokens) == ("tok0 tok1", 3)
    params = SamplingParams(max_new_tokens=9, stop_token_ids=(2, 4), min_tokens=3)
    later = await run_item(engine, WorkItem("r2", prompt="x", params=params))
    assert isinstance(later.end, SequenceFinished) and later.end.reason is FinishReason.STOP
    assert (later.text, later.end.completion_tokens) == ("tok0 tok1 tok2 tok3", 5)


async def test_stop_strings_are_looked_for_after_min_tokens() -> None:
    engine = await started(make_settings())
    params = SamplingParams(max_new_tokens=9, stop=("tok",), min_tokens=2)
    result = await run_item(engine, WorkItem("r1", prompt="x", params=params))
    assert isinstance(result.end, SequenceFinished) and result.end.reason is FinishReason.STOP
    assert (result.text, result.end.completion_tokens) == ("tok0 tok1 ", 3)


async def test_a_prompt_of_token_ids_is_decoded_first_and_counted_by_ids() -> None:
    engine = await started(make_settings())
    item = WorkItem("r1", prompt_token_ids=(3, 9, 4), params=SamplingParams(max_new_tokens=2, prompt_logprobs=0))
    result = await run_item(engine, item)
    first, *rest = result.deltas
    assert (first.text, first.tokens, first.prompt_text) == ("", 0, "tok3 tok9 tok4")
    assert all(d.prompt_text is None for d in rest)
    assert [lp.token for d in rest for lp in d.prompt_logprobs] == ["tok3", " tok9", " tok4"]
    assert isinstance(result.end, SequenceFinished) and result.end.prompt_tokens == 3


async def test_token_ids_are_reported_where_asked_the_prompts_at_admission() -> None:
    engine = await started(make_settings())
    params = SamplingParams(max_new_tokens=3, return_token_ids=True, stop_token_ids=(2,))
    result = await run_item(engine, WorkItem("r1", prompt="one two three four", params=params))
    admission, *rest = result.deltas
    assert (admission.text, admission.prompt_token_ids) == ("", (0, 1, 2, 3))
    assert isinstance(result.end, SequenceFinished) and result.end.prompt_tokens == 4
    # Token i has id i; the stop token adds no text, yet its id is reported.
    assert [t for d in rest for t in d.token_ids] == [0, 1, 2] and result.text == "tok0 tok1"
    ids = await run_item(engine, WorkItem("r2", prompt_token_ids=(7, 3), params=params))
    assert (ids.deltas[0].prompt_text, ids.deltas[0].prompt_token_ids) == ("tok7 tok3", (7, 3))
    plain = await run_item(engine, WorkItem("r3", prompt="x", params=SamplingParams(max_new_tokens=2)))
    assert all(not d.token_ids and not d.prompt_token_ids for d in plain.deltas)
