"""Helpers for driving an engine in tests: submit an item, collect its events."""

from __future__ import annotations

import asyncio

from services.worker.engine import Engine, EngineEvent, TextDelta, WorkItem

__all__ = ["Collected", "run_item"]


class Collected:
    """Everything one item produced."""

    def __init__(self) -> None:
        self.events: list[EngineEvent] = []

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def deltas(self) -> list[TextDelta]:
        return [e for e in self.events if isinstance(e, TextDelta)]

    @property
    def end(self) -> EngineEvent:
        return self.events[-1]


async def run_item(engine: Engine, item: WorkItem, timeout_s: float = 60.0) -> Collected:
    """Submit one item and collect its events until it ends."""
    queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
    engine.submit(item, queue.put_nowait)
    collected = Collected()
    async with asyncio.timeout(timeout_s):
        while True:
            event = await queue.get()
            collected.events.append(event)
            if not isinstance(event, TextDelta):
                return collected
