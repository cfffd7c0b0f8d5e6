"""The engine contract's shared parts: thread-to-loop delivery, cancel by id, abort."""

from __future__ import annotations

import asyncio
import threading
import time

from services.worker.engine import (
    FailureCode,
    SamplingParams,
    SequenceFailed,
    SequenceHandle,
    TextDelta,
    WorkItem,
    deliver_from_thread,
)
from services.worker.settings import WorkerSettings
from services.worker.simulated_engine import SimulatedEngine
from tests.services.worker.engine_runs import run_item


async def test_deliver_from_thread_runs_sinks_on_the_loop_in_order() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    done = asyncio.Event()
    loop_thread = threading.get_ident()

    def sink(event: object) -> None:
        seen.append((event.text, threading.get_ident() == loop_thread))  # type: ignore[attr-defined]
        if len(seen) == 3:
            done.set()

    handle = SequenceHandle(WorkItem("r"), sink, loop)
    events = [(handle, TextDelta("r", t, 1)) for t in ("a", "b", "c")]
    await asyncio.to_thread(deliver_from_thread, events)
    await asyncio.wait_for(done.wait(), 2)
    assert seen == [("a", True), ("b", True), ("c", True)]


def test_deliver_to_a_closed_loop_is_dropped_quietly() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    handle = SequenceHandle(WorkItem("r"), lambda e: None, loop)
    deliver_from_thread([(handle, TextDelta("r", "x", 1))])  # must not raise


def test_handle_expiry() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert not SequenceHandle(WorkItem("r"), print, loop).expired()
        assert SequenceHandle(WorkItem("r", deadline_unix=time.time() - 1), print, loop).expired()
    finally:
        loop.close()


async def test_abort_all_fails_every_active_sequence() -> None:
    engine = SimulatedEngine(WorkerSettings(worker_backend="simulated", simulated_tokens_per_s=10.0))
    await engine.start()
    tasks = [
        asyncio.create_task(run_item(engine, WorkItem(f"r{i}", prompt="x", params=SamplingParams(max_new_tokens=100))))
        for i in range(3)
    ]
    await asyncio.sleep(0.1)
    assert engine.abort_all(FailureCode.OVERLOADED, "going away") == 3
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r.end, SequenceFailed) and r.end.message == "going away" for r in results)
    assert engine.abort_all(FailureCode.OVERLOADED, "again") == 0
