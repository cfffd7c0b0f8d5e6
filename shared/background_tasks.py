"""Supervising a service's background tasks: run until asked to stop, or until one of them ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["cancel_and_wait", "run_until_stopped"]


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel `task` and wait until it has ended. Its CancelledError is swallowed (the cancellation
    just asked for); any other exception it ends with is raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass  # Safe: the cancellation just asked for


async def run_until_stopped(stop: asyncio.Event, tasks: Iterable[asyncio.Task[object]], *, name: str) -> None:
    """Wait until `stop` is set or a task in `tasks` ends. A task that ends on its own is a
    failure: its exception is re-raised (or RuntimeError if it returned), so the process exits
    non-zero and its supervisor restarts it."""
    stopper = asyncio.create_task(stop.wait(), name=f"{name}-stop")
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    for task in done:
        if task is not stopper:
            task.result()  # re-raises the failure
            raise RuntimeError(f"{task.get_name()} ended unexpectedly")
