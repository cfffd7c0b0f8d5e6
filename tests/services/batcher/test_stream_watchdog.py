"""StreamWatchdog against a real gRPC server speaking the worker API.

A worker process cannot be frozen inside the test process, so the server here stands in for one:
its Generate sends a first delta and then goes silent, and its Info either answers (a busy worker)
or never does (a hung one). The whole-process case (SIGSTOP of a real worker) is in
tests/integration/test_batcher_failover.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from services.batcher.stream_watchdog import StreamWatchdog
from shared.protos import worker_pb2, worker_pb2_grpc

STALL_S = 0.3
PROBE_TIMEOUT_S = 0.3


class _SilentWorker(worker_pb2_grpc.WorkerServicer):
    """One delta, then silence for `silence_s` (forever when None), then the end."""

    def __init__(self, *, silence_s: float | None, answers_info: bool) -> None:
        self.silence_s = silence_s
        self.answers_info = answers_info
        self.info_calls = 0
        self.forever = asyncio.Event()

    async def Generate(self, request, context) -> AsyncIterator[worker_pb2.GenerateEvent]:  # noqa: N802 - gRPC name
        rid = request.items[0].request_id
        yield worker_pb2.GenerateEvent(request_id=rid, delta=worker_pb2.TokenDelta(text="tok0", tokens=1))
        if self.silence_s is None:
            await self.forever.wait()
        await asyncio.sleep(self.silence_s)
        yield worker_pb2.GenerateEvent(
            request_id=rid, finished=worker_pb2.Finished(reason=worker_pb2.FINISH_REASON_LENGTH, completion_tokens=1)
        )

    async def Info(self, request, context) -> worker_pb2.InfoResponse:  # noqa: N802 - gRPC name
        self.info_calls += 1
        if not self.answers_info:
            await self.forever.wait()
        return worker_pb2.InfoResponse(worker_id="silent", model="simulated", running=1)


async def _serve(servicer: _SilentWorker) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _read_all(servicer: _SilentWorker) -> tuple[StreamWatchdog, list[str], BaseException | None]:
    server, target = await _serve(servicer)
    kinds: list[str] = []
    error: BaseException | None = None
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)

            async def probe() -> bool:
                try:
                    await stub.Info(worker_pb2.InfoRequest(), timeout=PROBE_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    return False
                return True

            params = worker_pb2.SamplingParams(max_new_tokens=2)
            item = worker_pb2.WorkItem(request_id="r-1", prompt="hi", params=params)
            call = stub.Generate(worker_pb2.GenerateRequest(items=[item]), timeout=30)
            watchdog = StreamWatchdog(call, probe, stall_s=STALL_S)
            try:
                async with watchdog:
                    async for event in call:
                        watchdog.saw_event()
                        kinds.append(event.WhichOneof("event"))
            except asyncio.CancelledError as exc:
                error = exc
    finally:
        servicer.forever.set()
        await server.stop(grace=None)
    return watchdog, kinds, error


async def test_a_silent_stream_of_a_worker_that_does_not_answer_is_cancelled() -> None:
    servicer = _SilentWorker(silence_s=None, answers_info=False)
    started = time.monotonic()
    watchdog, kinds, error = await asyncio.wait_for(_read_all(servicer), timeout=20)
    assert watchdog.stalled
    assert isinstance(error, asyncio.CancelledError)  # how a read of a cancelled call ends
    assert kinds == ["delta"]
    assert servicer.info_calls >= 1
    assert time.monotonic() - started < 15  # bounded by stall + probe, far below the RPC timeout


async def test_a_silent_stream_of_a_worker_that_answers_is_left_alone() -> None:
    servicer = _SilentWorker(silence_s=4 * STALL_S, answers_info=True)
    watchdog, kinds, error = await asyncio.wait_for(_read_all(servicer), timeout=20)
    assert not watchdog.stalled
    assert error is None
    assert kinds == ["delta", "finished"]
    assert servicer.info_calls >= 1  # it was asked, answered, and the stream went on


async def test_a_stream_with_events_is_never_probed() -> None:
    servicer = _SilentWorker(silence_s=STALL_S / 3, answers_info=False)
    watchdog, kinds, error = await asyncio.wait_for(_read_all(servicer), timeout=20)
    assert (watchdog.stalled, error, kinds) == (False, None, ["delta", "finished"])
    assert servicer.info_calls == 0


async def test_leaving_the_block_stops_the_watchdog() -> None:
    stall_s = 0.05
    calls = 0

    class _Call:
        def cancel(self) -> bool:
            raise AssertionError("nothing to cancel: the stream ended")

    async def probe() -> bool:
        nonlocal calls
        calls += 1
        return True

    async with StreamWatchdog(_Call(), probe, stall_s=stall_s):  # type: ignore[arg-type]
        pass
    await asyncio.sleep(3 * stall_s)
    assert calls == 0


async def test_a_probe_that_raises_counts_as_no_answer() -> None:
    cancelled = asyncio.Event()

    class _Call:
        def cancel(self) -> bool:
            cancelled.set()
            return True

    async def probe() -> bool:
        raise RuntimeError("Channel is closed.")  # e.g. the worker's channel is already closing

    async with StreamWatchdog(_Call(), probe, stall_s=0.05) as watchdog:  # type: ignore[arg-type]
        await asyncio.wait_for(cancelled.wait(), timeout=5)
    assert watchdog.stalled
