"""What the simulated and vllm backends share: every sequence is one asyncio task on the worker's
event loop (no engine thread of ours).

`TaskPerSequenceEngine` keeps the tasks, refuses items while the engine cannot take them, cancels a
sequence by cancelling its task, and turns the way a task ended into exactly one terminal event:
the `SequenceFinished` its body returned, the event of a `SequenceAbort` it raised, `CANCELLED` (or
the event `abort_all` set) when it was cancelled, or `INTERNAL` for an unexpected exception (only
that sequence fails; the batcher retries it elsewhere). A backend that can no longer generate at
all (vLLM's engine core died) calls `_fail_for_good`: every sequence fails, and so does the worker.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from dataclasses import dataclass

from services.worker.engine import (
    Engine,
    EngineEvent,
    EventSink,
    FailureCode,
    FinishReason,
    SequenceFailed,
    SequenceFinished,
    SequenceHandle,
    WorkItem,
)

__all__ = ["SequenceAbort", "SequenceProgress", "TaskPerSequenceEngine"]

log = logging.getLogger(__name__)


class SequenceAbort(Exception):
    """Raised inside a sequence's task to end it with `event`."""

    def __init__(self, event: SequenceFinished | SequenceFailed) -> None:
        super().__init__(event)
        self.event = event


@dataclass(eq=False, slots=True)
class SequenceProgress:
    """What one sequence has done so far (event loop only)."""

    prompt_tokens: int = 0
    generated: int = 0
    reported: int = 0
    """Tokens already covered by a TextDelta."""
    ttft_ms: float = 0.0
    started: bool = False
    """Its first token came (it counts as running, not waiting)."""

    def finished(self, handle: SequenceHandle, reason: FinishReason) -> SequenceFinished:
        """The terminal event of a sequence that ended normally."""
        return SequenceFinished(
            handle.request_id, reason, self.prompt_tokens, self.generated, self.ttft_ms, handle.elapsed_ms()
        )


class TaskPerSequenceEngine(Engine):
    """An engine whose sequences are asyncio tasks; subclasses write `_sequence` (and `_not_ready`)."""

    def __init__(self) -> None:
        self._tasks: dict[int, tuple[SequenceHandle, asyncio.Task[None]]] = {}
        self._running = 0
        self._waiting = 0
        self._stopping = False
        self._failure: str | None = None

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def failure(self) -> str | None:
        return self._failure

    def _fail_for_good(self, message: str) -> None:
        """The backend can no longer generate (`EngineFailedError`): every held sequence fails with
        INTERNAL (the batcher retries it elsewhere), new items are refused with INTERNAL, and the
        service is told once, so that the worker stops and is restarted."""
        if self._failure is not None:
            return
        self._failure = message
        log.error("the engine failed for good; failing every sequence and stopping", extra={"failure": message})
        if self.on_failure is not None:
            self.on_failure(message)
        self.abort_all(FailureCode.INTERNAL, message)

    @abstractmethod
    def _not_ready(self) -> str | None:
        """Why a new item is refused now (OVERLOADED), or None to take it."""

    @abstractmethod
    async def _sequence(self, handle: SequenceHandle, progress: SequenceProgress) -> SequenceFinished:
        """Generate for one item, sending its TextDeltas to `handle.sink`; returns its end, or
        raises SequenceAbort."""

    def _new_progress(self, item: WorkItem) -> SequenceProgress:
        """The progress record a new sequence starts with."""
        return SequenceProgress()

    def _sequence_ended(self, progress: SequenceProgress) -> None:
        """Called once per sequence after its task ended, before its terminal event goes out."""

    # ---------------------------------------------------------------- Engine

    def submit(self, item: WorkItem, sink: EventSink) -> SequenceHandle:
        loop = asyncio.get_running_loop()
        handle = SequenceHandle(item, sink, loop)
        code, refusal = FailureCode.OVERLOADED, None
        if self._failure is not None:
            code, refusal = FailureCode.INTERNAL, self._failure
        else:
            refusal = "the worker is shutting down" if self._stopping else self._not_ready()
        if refusal is not None:
            handle.ended = True
            loop.call_soon(sink, SequenceFailed(item.request_id, code, refusal))
            return handle
        progress = self._new_progress(item)
        task = loop.create_task(self._generate(handle, progress), name=f"{type(self).__name__}-{item.request_id}")
        self._tasks[handle.key] = (handle, task)
        return handle

    def cancel(self, handle: SequenceHandle) -> bool:
        entry = self._tasks.get(handle.key)
        if entry is None or handle.ended or handle.cancelled:
            return False
        handle.cancelled = True
        entry[1].cancel()
        return True

    def active(self) -> list[SequenceHandle]:
        return [handle for handle, _ in self._tasks.values()]

    def _wake(self) -> None:
        for handle, task in self._tasks.values():
            if handle.abort is not None:
                task.cancel()

    async def _stop_sequences(self) -> None:
        """Refuse new items, fail the running ones with OVERLOADED and wait for their tasks."""
        self._stopping = True
        self.abort_all(FailureCode.OVERLOADED, "the worker is shutting down")
        tasks = [task for _, task in self._tasks.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _generate(self, handle: SequenceHandle, progress: SequenceProgress) -> None:
        item = handle.item
        event: EngineEvent
        try:
            event = await self._sequence(handle, progress)
        except asyncio.CancelledError:
            # Safe: a cancel here is always ours (cancel(), abort_all() or a stop); it ends the
            # sequence with the abort's event or as cancelled.
            event = handle.abort or progress.finished(handle, FinishReason.CANCELLED)
        except SequenceAbort as abort:
            event = abort.event
        except Exception as exc:
            # Safe: only this sequence is affected; it fails with INTERNAL (the batcher retries it
            # elsewhere) and the others go on.
            log.exception("the engine failed a sequence", extra={"request_id": item.request_id})
            event = SequenceFailed(item.request_id, FailureCode.INTERNAL, f"{self.info.backend} failed: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(handle.key, None)
            self._sequence_ended(progress)
        handle.ended = True
        handle.sink(event)
