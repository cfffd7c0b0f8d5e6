"""The Worker gRPC service (shared/protos/worker.proto): a thin layer over an Engine.

Generate converts the items at the edge, submits them, and streams every item's events on one
stream until each has ended with exactly one Finished or Failed. GenerateBatched does the same with
the events that are ready together (the rest of an engine step) in one stream message: per message,
gRPC costs both ends the same whatever it carries. Items it cannot take (draining, not loaded,
full, wrong model, invalid) fail on the stream at once, so the batcher can retry them elsewhere.
When the client cancels the RPC (or it breaks), every item still running is cancelled. Deltas are
joined per `worker_stream_interval` (services/worker/delta_coalescing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from services.worker.delta_coalescing import DeltaCoalescer
from services.worker.engine import (
    Engine,
    EngineEvent,
    FailureCode,
    SequenceFailed,
    SequenceFinished,
    SequenceHandle,
    TextDelta,
    WorkItem,
)
from services.worker.metrics import WorkerMetrics
from services.worker.proto_convert import (
    MAX_REQUEST_ID_LENGTH,
    InvalidArgumentError,
    InvalidItemError,
    event_to_proto,
    work_item_from_proto,
)
from services.worker.settings import WorkerSettings
from shared.protos import worker_pb2, worker_pb2_grpc
from shared.structured_logging import request_context

__all__ = ["WorkerServicer"]

log = logging.getLogger(__name__)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Serves Generate, GenerateBatched, Cancel and Info for one engine."""

    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine,
        metrics: WorkerMetrics,
        *,
        ready: Callable[[], bool],
        draining: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._metrics = metrics
        self._ready = ready
        self._draining = draining
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_calls(self) -> int:
        """Generate calls still streaming."""
        return self._calls

    async def wait_idle(self) -> None:
        """Return once no Generate call is streaming."""
        await self._idle.wait()

    def _accepts_model(self, name: str) -> bool:
        if not name:
            return True
        wanted = name.lower()
        served = {self._engine.info.model.lower()}
        if not self._engine.info.simulated:
            served.add(self._settings.model.lower())
        return wanted in served

    def _refusal(self, model: str) -> SequenceFailed | None:
        """Why every item of this call fails at once, if one does."""
        if self._draining():
            return SequenceFailed("", FailureCode.OVERLOADED, "the worker is draining before it stops")
        if not self._ready():
            return SequenceFailed("", FailureCode.OVERLOADED, "the worker is still loading its model")
        if not self._accepts_model(model):
            return SequenceFailed(
                "", FailureCode.MODEL_NOT_FOUND, f"this worker serves {self._engine.info.model!r}, not {model!r}"
            )
        return None

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateEvent]:
        # aclosing: when this stream ends early, the items' cleanup runs now, not at collection.
        async with contextlib.aclosing(self._event_batches(request)) as batches:
            async for ready in batches:
                for event in ready:
                    yield event

    async def GenerateBatched(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateEvents]:
        async with contextlib.aclosing(self._event_batches(request)) as batches:
            async for ready in batches:
                yield worker_pb2.GenerateEvents(events=ready)

    async def _event_batches(
        self, request: worker_pb2.GenerateRequest
    ) -> AsyncIterator[list[worker_pb2.GenerateEvent]]:
        """The call's events, as lists of those that were ready together (never empty)."""
        ids = [item.request_id for item in request.items]
        if not ids:
            raise InvalidArgumentError("GenerateRequest has no items")
        if any(not rid or len(rid) > MAX_REQUEST_ID_LENGTH for rid in ids):
            raise InvalidArgumentError(f"every item needs a request_id of 1 to {MAX_REQUEST_ID_LENGTH} characters")
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("request_ids must be unique within one GenerateRequest")

        self._calls += 1
        self._idle.clear()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        handles: list[SequenceHandle] = []
        try:
            refusal = self._refusal(request.model)
            room = self._room()
            for item in request.items:
                outcome = refusal or _convert(item)
                if isinstance(outcome, WorkItem):
                    if room > 0:
                        room -= 1
                        handles.append(self._engine.submit(outcome, events.put_nowait))
                        continue
                    outcome = SequenceFailed("", FailureCode.OVERLOADED, "the worker's queue is full")
                events.put_nowait(SequenceFailed(item.request_id, outcome.code, outcome.message))
            pending = set(ids)
            coalescer = DeltaCoalescer(self._settings.worker_stream_interval)
            while pending:
                ready: list[worker_pb2.GenerateEvent] = []
                event = await events.get()
                while True:
                    if isinstance(event, TextDelta):
                        joined = coalescer.add(event)
                        if joined is not None:
                            ready.append(event_to_proto(joined))
                    else:
                        held = coalescer.flush(event.request_id)
                        if held is not None:
                            ready.append(event_to_proto(held))
                        pending.discard(event.request_id)
                        self._metrics.ended(event)
                        _log_end(event)
                        ready.append(event_to_proto(event))
                    # Everything else the engine has put by now (the rest of its step) goes too.
                    if events.empty():
                        break
                    event = events.get_nowait()
                if ready:
                    yield ready
        finally:
            # Reached with items pending when the client cancelled the RPC or the stream broke.
            for handle in handles:
                if not handle.ended:
                    self._engine.cancel(handle)
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()

    def _room(self) -> int:
        """Items this worker may still accept (running + waiting bounded by capacity + queue)."""
        engine = self._engine
        limit = self._settings.worker_max_batch_size + self._settings.worker_max_waiting
        return limit - engine.running - engine.waiting

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.CancelResponse:
        cancelled = self._engine.cancel_requests(request.request_ids)
        if cancelled:
            log.info("cancelled", extra={"request_ids": list(request.request_ids)[:20], "count": cancelled})
        return worker_pb2.CancelResponse(cancelled=cancelled)

    async def Info(self, request: worker_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> worker_pb2.InfoResponse:
        engine = self._engine
        if not self._ready():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the worker is still loading its model")
        info = engine.info
        return worker_pb2.InfoResponse(
            worker_id=self._settings.instance_id,
            model=info.model,
            backend=info.backend,
            device=info.device,
            dtype=info.dtype,
            max_batch_size=info.max_batch_size,
            running=engine.running,
            waiting=engine.waiting,
            max_model_len=info.max_model_len,
            simulated=info.simulated,
        )


def _log_end(event: SequenceFinished | SequenceFailed) -> None:
    """One line per ended item, with its request id."""
    with request_context(event.request_id):
        if isinstance(event, SequenceFinished):
            log.info(
                "item finished",
                extra={
                    "reason": event.reason.value,
                    "prompt_tokens": event.prompt_tokens,
                    "completion_tokens": event.completion_tokens,
                    "ttft_ms": round(event.ttft_ms, 1),
                    "total_ms": round(event.total_ms, 1),
                },
            )
        else:
            log.info("item failed", extra={"code": event.code.value, "reason": event.message})


def _convert(item: worker_pb2.WorkItem) -> WorkItem | SequenceFailed:
    """The engine's WorkItem, or why the item fails (INVALID_REQUEST)."""
    try:
        return work_item_from_proto(item)
    except InvalidItemError as exc:
        return SequenceFailed(item.request_id, FailureCode.INVALID_REQUEST, str(exc))
