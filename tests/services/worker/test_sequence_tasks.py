"""`TaskPerSequenceEngine`'s fail-stop, on the simulated backend (the vllm backend calls it when
vLLM's engine core dies: `test_vllm_engine.py`, where vLLM is installed)."""

from __future__ import annotations

import asyncio

from services.worker.engine import FailureCode, SamplingParams, SequenceFailed, WorkItem
from services.worker.settings import WorkerSettings
from services.worker.simulated_engine import SimulatedEngine
from tests.services.worker.engine_runs import run_item


async def test_failing_for_good_fails_every_sequence_refuses_new_ones_and_tells_the_service_once() -> None:
    engine = SimulatedEngine(WorkerSettings(worker_backend="simulated", simulated_tokens_per_s=10.0))
    await engine.start()
    told: list[str] = []
    engine.on_failure = told.append
    try:
        running = [
            asyncio.create_task(run_item(engine, WorkItem(f"r{i}", prompt="x", params=SamplingParams(max_new_tokens=500))))
            for i in range(3)
        ]
        while engine.running < 3:
            await asyncio.sleep(0.01)
        assert engine.failure is None
        engine._fail_for_good("the backend died")
        engine._fail_for_good("and died again")  # told once, with the first reason
        results = await asyncio.wait_for(asyncio.gather(*running), 10)
        assert all(isinstance(r.end, SequenceFailed) and r.end.code is FailureCode.INTERNAL for r in results)
        assert {r.end.message for r in results} == {"the backend died"}
        assert engine.failure == "the backend died" and told == ["the backend died"]
        later = await run_item(engine, WorkItem("later", prompt="x"))
        assert isinstance(later.end, SequenceFailed) and later.end.code is FailureCode.INTERNAL
        assert later.end.message == "the backend died"
    finally:
        await engine.stop()
