"""Stopping a background task: cancelled and awaited, its own failure still raised."""

from __future__ import annotations

import asyncio

import pytest

from shared.background_tasks import cancel_and_wait


async def test_cancel_and_wait_returns_once_the_task_has_ended() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(forever())
    await started.wait()
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_raises_what_the_task_fails_with() -> None:
    started = asyncio.Event()

    async def fails_on_the_way_out() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("cleanup failed")

    task = asyncio.create_task(fails_on_the_way_out())
    await started.wait()
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)
