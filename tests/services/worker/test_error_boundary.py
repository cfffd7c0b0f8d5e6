"""The error boundary turns escaping exceptions into INTERNAL / INVALID_ARGUMENT statuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from services.worker.error_boundary import ErrorBoundaryInterceptor
from services.worker.proto_convert import InvalidArgumentError
from shared.launcher.infra import find_free_port
from shared.protos import worker_pb2, worker_pb2_grpc


class BrokenServicer(worker_pb2_grpc.WorkerServicer):
    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom in Info")

    async def Cancel(self, request, context):  # type: ignore[no-untyped-def]
        raise InvalidArgumentError("request_ids must not be empty")

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        yield worker_pb2.GenerateEvent(request_id=request.items[0].request_id, delta=worker_pb2.TokenDelta(text="a"))
        raise KeyError("lost state")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[ErrorBoundaryInterceptor()])
    worker_pb2_grpc.add_WorkerServicer_to_server(BrokenServicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{find_free_port()}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(grace=None)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> worker_pb2_grpc.WorkerStub:
    return worker_pb2_grpc.WorkerStub(channel)


async def test_unexpected_exception_becomes_internal(stub: worker_pb2_grpc.WorkerStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Info(worker_pb2.InfoRequest())
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError: boom in Info" in (error.value.details() or "")


async def test_invalid_argument_keeps_its_message(stub: worker_pb2_grpc.WorkerStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Cancel(worker_pb2.CancelRequest())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "request_ids must not be empty"


async def test_stream_failure_after_events_is_internal_and_logged_with_the_request_id(
    stub: worker_pb2_grpc.WorkerStub, caplog: pytest.LogCaptureFixture
) -> None:
    call = stub.Generate(worker_pb2.GenerateRequest(items=[worker_pb2.WorkItem(request_id="req-42")]))
    first = await call.read()
    assert first.delta.text == "a"
    with caplog.at_level(logging.ERROR, logger="services.worker.error_boundary"), pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" in (error.value.details() or "")
    logged = [r for r in caplog.records if r.name == "services.worker.error_boundary"]
    assert logged and logged[0].exc_info is not None
    assert logged[0].request_ids == "req-42"  # type: ignore[attr-defined]


@pytest.mark.parametrize("raw", [b"\x0f\x01", b"\x0a\x05ab", b"\x0a\x02\xff\xfe"])
async def test_bytes_that_are_not_the_request_message_are_invalid_argument(
    channel: grpc.aio.Channel, raw: bytes
) -> None:
    # grpcio's own parse failure would be UNKNOWN; the boundary parses and names the message.
    cancel = channel.unary_unary("/lgc.worker.v1.Worker/Cancel", request_serializer=None, response_deserializer=None)
    generate = channel.unary_stream("/lgc.worker.v1.Worker/Generate", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await cancel(raw)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid lgc.worker.v1.CancelRequest message" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _event in generate(raw):
            pass
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid lgc.worker.v1.GenerateRequest message" in (error.value.details() or "")
