"""Notices a worker stream that went silent because its worker hangs, and cancels it.

A worker that hangs without dying (a frozen process, a stuck host) keeps its TCP connection open,
so its Generate stream neither breaks nor ends: without a watchdog the batcher would wait for the
requests' deadlines (or `batcher_rpc_timeout_s`) and they would end with `deadline_exceeded`.

The watchdog arms a timer per stream. When the stream has been silent for `stall_s` (no event for
any of its requests), it asks the worker whether it still answers (a cheap `Info` RPC bounded by
`probe_timeout_s`). A worker that answers is alive but busy (a batch waiting for a slot behind a
full one is silent for as long as that one runs), so the stream keeps going and the timer starts
again. A worker that does not answer is taken as hung: the watchdog cancels the call, the reader's
next read raises `asyncio.CancelledError`, and the dispatcher retries the requests on another
worker, continuing after the text already delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import grpc

from shared.background_tasks import cancel_and_wait

__all__ = ["StreamWatchdog"]


class StreamWatchdog:
    """Use as `async with StreamWatchdog(call, probe, ...) as watchdog:` around reading `call`,
    calling `saw_event()` for each event; afterwards `stalled` says whether it cancelled the call."""

    def __init__(
        self, call: grpc.aio.Call, probe: Callable[[], Awaitable[bool]], *, stall_s: float
    ) -> None:
        self._call = call
        self._probe = probe
        self._stall_s = stall_s
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.stalled = False
        """True once the watchdog cancelled the call because its worker did not answer."""

    def saw_event(self) -> None:
        """The stream is alive: restart the silence timer."""
        self._last = time.monotonic()

    async def __aenter__(self) -> StreamWatchdog:
        self._last = time.monotonic()
        self._task = asyncio.create_task(self._watch(), name="stream-watchdog")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        await cancel_and_wait(self._task)

    async def _watch(self) -> None:
        while True:
            silent_for = time.monotonic() - self._last
            if silent_for < self._stall_s:
                await asyncio.sleep(self._stall_s - silent_for)  # one timer per period, no polling
                continue
            asked_at = time.monotonic()
            try:
                answered = await self._probe()
            except Exception:  # noqa: BLE001
                # Safe: a probe that fails in an unforeseen way cannot vouch for the worker; the
                # stream is then treated as hung and its requests go elsewhere (never stranded).
                answered = False
            if answered or self._last >= asked_at:
                # Alive, merely busy (or events came while it was asked): wait another period.
                self._last = max(self._last, asked_at)
                continue
            self.stalled = True
            self._call.cancel()
            return
