"""The Worker gRPC service in-process, driven by a real grpc.aio client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.worker.grpc_servicer import WorkerServicer
from services.worker.precision import cpu_computes_bfloat16
from services.worker.service import WORKER_SERVICE_NAME, WorkerService
from shared.protos import worker_pb2, worker_pb2_grpc
from shared.settings import ClusterSettings
from tests.services.worker.service_fixtures import serving, worker_settings


@pytest.fixture
async def service(cluster_settings: ClusterSettings) -> AsyncIterator[WorkerService]:
    service = WorkerService(worker_settings(cluster_settings))
    await service.start()
    try:
        yield service
    finally:
        await service.drain(timeout_s=1)
        await service.stop()


@pytest.fixture
async def stub(service: WorkerService) -> AsyncIterator[worker_pb2_grpc.WorkerStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield worker_pb2_grpc.WorkerStub(channel)


def item(request_id: str, max_new_tokens: int = 5, **fields: object) -> worker_pb2.WorkItem:
    params = worker_pb2.SamplingParams(max_new_tokens=max_new_tokens)
    return worker_pb2.WorkItem(request_id=request_id, prompt="hello world", params=params, **fields)  # type: ignore[arg-type]


async def collect(call: object) -> list[worker_pb2.GenerateEvent]:
    """Read a Generate stream to its end (read() style, so it mixes with an earlier read())."""
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        events.append(event)
    return events


def by_request(events: list[worker_pb2.GenerateEvent]) -> dict[str, list[worker_pb2.GenerateEvent]]:
    grouped: dict[str, list[worker_pb2.GenerateEvent]] = {}
    for event in events:
        grouped.setdefault(event.request_id, []).append(event)
    return grouped


async def test_generate_streams_every_item_and_ends_each_once(stub: worker_pb2_grpc.WorkerStub) -> None:
    request = worker_pb2.GenerateRequest(items=[item("a", 3), item("b", 6)])
    events = await collect(stub.Generate(request))
    grouped = by_request(events)
    assert set(grouped) == {"a", "b"}
    for rid, expected in (("a", 3), ("b", 6)):
        kinds = [e.WhichOneof("event") for e in grouped[rid]]
        assert kinds.count("finished") == 1 and kinds[-1] == "finished" and "failed" not in kinds
        finished = grouped[rid][-1].finished
        assert finished.reason == worker_pb2.FINISH_REASON_LENGTH
        assert finished.completion_tokens == expected
        text = "".join(e.delta.text for e in grouped[rid] if e.WhichOneof("event") == "delta")
        assert text == " ".join(f"tok{i}" for i in range(expected))
    # Interleaved on one stream: b's events do not all come after a's.
    order = [e.request_id for e in events]
    assert order.index("b") < len(order) - order[::-1].index("a") - 1


async def test_generate_batched_carries_the_same_events_in_fewer_messages(stub: worker_pb2_grpc.WorkerStub) -> None:
    lengths = {"a": 3, "b": 6, "c": 6, "d": 9}
    request = worker_pb2.GenerateRequest(items=[item(rid, n) for rid, n in lengths.items()])
    messages = await collect(stub.GenerateBatched(request))
    assert all(isinstance(m, worker_pb2.GenerateEvents) and m.events for m in messages)
    events = [e for m in messages for e in m.events]
    grouped = by_request(events)
    assert set(grouped) == set(lengths)
    for rid, expected in lengths.items():
        kinds = [e.WhichOneof("event") for e in grouped[rid]]
        assert kinds.count("finished") == 1 and kinds[-1] == "finished" and "failed" not in kinds
        assert grouped[rid][-1].finished.completion_tokens == expected
        text = "".join(e.delta.text for e in grouped[rid] if e.WhichOneof("event") == "delta")
        assert text == " ".join(f"tok{i}" for i in range(expected))
    # The four sequences step together, so one message carries several requests' events.
    assert len(messages) < len(events)
    assert max(len({e.request_id for e in m.events}) for m in messages) > 1


async def test_invalid_item_fails_alone(stub: worker_pb2_grpc.WorkerStub) -> None:
    bad = worker_pb2.WorkItem(request_id="bad", prompt="x", params=worker_pb2.SamplingParams(max_new_tokens=0))
    grouped = by_request(await collect(stub.Generate(worker_pb2.GenerateRequest(items=[bad, item("good", 2)]))))
    assert grouped["bad"][-1].failed.code == worker_pb2.FAILURE_CODE_INVALID_REQUEST
    assert "max_new_tokens" in grouped["bad"][-1].failed.message
    assert grouped["good"][-1].finished.completion_tokens == 2


@pytest.mark.parametrize("method", ["Generate", "GenerateBatched"])
async def test_malformed_call_is_invalid_argument(stub: worker_pb2_grpc.WorkerStub, method: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await collect(getattr(stub, method)(worker_pb2.GenerateRequest()))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no items" in (empty.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await collect(getattr(stub, method)(worker_pb2.GenerateRequest(items=[item("x"), item("x")])))
    assert duplicate.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_other_model_fails_with_model_not_found(stub: worker_pb2_grpc.WorkerStub) -> None:
    events = await collect(stub.Generate(worker_pb2.GenerateRequest(items=[item("m")], model="gpt-9")))
    assert [e.WhichOneof("event") for e in events] == ["failed"]
    assert events[0].failed.code == worker_pb2.FAILURE_CODE_MODEL_NOT_FOUND
    ok = await collect(stub.Generate(worker_pb2.GenerateRequest(items=[item("m", 1)], model="simulated")))
    assert ok[-1].WhichOneof("event") == "finished"


async def test_deadline_travels_to_the_engine(stub: worker_pb2_grpc.WorkerStub) -> None:
    late = item("late", 1000, deadline_unix=time.time() + 0.2)
    events = await collect(stub.Generate(worker_pb2.GenerateRequest(items=[late])))
    assert events[-1].failed.code == worker_pb2.FAILURE_CODE_DEADLINE_EXCEEDED


async def test_cancel_rpc_stops_named_items(service: WorkerService, stub: worker_pb2_grpc.WorkerStub) -> None:
    call = stub.Generate(worker_pb2.GenerateRequest(items=[item("keep", 10), item("stop", 1000)]))
    first = await call.read()
    assert first.WhichOneof("event") == "delta"
    response = await stub.Cancel(worker_pb2.CancelRequest(request_ids=["stop", "never-seen"]))
    assert response.cancelled == 1
    grouped = by_request([first, *await collect(call)])
    assert grouped["stop"][-1].finished.reason == worker_pb2.FINISH_REASON_CANCELLED
    assert grouped["stop"][-1].finished.completion_tokens < 1000
    assert grouped["keep"][-1].finished.reason == worker_pb2.FINISH_REASON_LENGTH


@pytest.mark.parametrize("method", ["Generate", "GenerateBatched"])
async def test_client_cancelling_the_rpc_cancels_its_items(
    service: WorkerService, stub: worker_pb2_grpc.WorkerStub, method: str
) -> None:
    call = getattr(stub, method)(worker_pb2.GenerateRequest(items=[item("x1", 1000), item("x2", 1000)]))
    await call.read()
    assert service.engine.running == 2
    call.cancel()
    async with asyncio.timeout(5):
        while service.engine.running or service.servicer.active_calls:
            await asyncio.sleep(0.02)
    assert list(service.engine.active()) == []


async def test_info(service: WorkerService, stub: worker_pb2_grpc.WorkerStub) -> None:
    call = stub.Generate(worker_pb2.GenerateRequest(items=[item(f"i{k}", 1000) for k in range(6)]))
    await call.read()
    info = await stub.Info(worker_pb2.InfoRequest())
    assert info.worker_id == service.settings.instance_id
    assert (info.model, info.backend, info.simulated) == ("simulated", "simulated", True)
    assert (info.max_batch_size, info.running, info.waiting) == (4, 4, 2)
    call.cancel()


async def test_health_and_reflection(service: WorkerService) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", WORKER_SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name async for r in responses for s in r.list_services_response.service}
        assert WORKER_SERVICE_NAME in names
        await service.drain(timeout_s=1)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=WORKER_SERVICE_NAME))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_transformers_backend_over_grpc(cluster_settings: ClusterSettings, model_state_dir: Path) -> None:
    settings = worker_settings(
        cluster_settings, worker_backend="transformers", state_dir=model_state_dir, worker_max_model_len=512
    )
    service = WorkerService(settings)
    await service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            info = await stub.Info(worker_pb2.InfoRequest())
            assert (info.model, info.backend, info.dtype, info.simulated) == (
                "SmolLM2-135M-Instruct", "transformers", "bfloat16" if cpu_computes_bfloat16() else "float32", False,
            )
            question = worker_pb2.WorkItem(
                request_id="q",
                messages=[worker_pb2.ChatMessage(role="user", content="What is the capital of France?")],
                params=worker_pb2.SamplingParams(max_new_tokens=8),
            )
            request = worker_pb2.GenerateRequest(items=[question, item("p", 4)], model="smollm2")
            grouped = by_request(await collect(stub.Generate(request)))
            answer = "".join(e.delta.text for e in grouped["q"] if e.WhichOneof("event") == "delta")
            assert "Paris" in answer
            assert grouped["p"][-1].finished.completion_tokens == 4
    finally:
        await service.drain(timeout_s=5)
        await service.stop()


async def test_full_worker_refuses_the_overflow(cluster_settings: ClusterSettings) -> None:
    async with serving(worker_settings(cluster_settings, worker_max_batch_size=2, worker_max_waiting=1)) as (_, stub):
        grouped = by_request(await collect(stub.Generate(worker_pb2.GenerateRequest(items=[item(f"o{k}", 2) for k in range(5)]))))
    ends = {rid: events[-1].WhichOneof("event") for rid, events in grouped.items()}
    assert sorted(ends.values()) == ["failed", "failed", "finished", "finished", "finished"]
    assert all(grouped[rid][-1].failed.code == worker_pb2.FAILURE_CODE_OVERLOADED for rid, e in ends.items() if e == "failed")


async def test_stream_interval_joins_deltas_and_keeps_text_and_counts(cluster_settings: ClusterSettings) -> None:
    async with serving(worker_settings(cluster_settings, worker_stream_interval=3)) as (_, stub):
        grouped = by_request(await collect(stub.Generate(worker_pb2.GenerateRequest(items=[item("a", 8), item("b", 1)]))))
    deltas = [e.delta for e in grouped["a"] if e.WhichOneof("event") == "delta"]
    assert [d.tokens for d in deltas] == [1, 3, 3, 1]  # first at once, then 3 by 3, the rest before the end
    assert "".join(d.text for d in deltas) == " ".join(f"tok{i}" for i in range(8))
    assert grouped["a"][-1].finished.completion_tokens == 8
    assert [e.WhichOneof("event") for e in grouped["b"]] == ["delta", "finished"]


async def test_while_loading_generate_is_overloaded_and_info_unavailable(cluster_settings: ClusterSettings) -> None:
    settings = worker_settings(cluster_settings)
    service = WorkerService(settings)
    servicer = WorkerServicer(settings, service.engine, service.metrics, ready=lambda: False, draining=lambda: False)
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            events = await collect(stub.Generate(worker_pb2.GenerateRequest(items=[item("early")])))
            assert events[-1].failed.code == worker_pb2.FAILURE_CODE_OVERLOADED
            assert "loading" in events[-1].failed.message
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Info(worker_pb2.InfoRequest())
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(grace=None)
