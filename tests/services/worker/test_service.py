"""The worker service's lifecycle: registration in the real Redis, snapshots on the real Kafka,
ops endpoints, and the graceful drain."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from services.worker.service import WorkerService
from shared.kafka_clients import make_consumer
from shared.protos import worker_pb2, worker_pb2_grpc
from shared.records import MetricsSnapshot
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics
from shared.worker_registry import WorkerRegistry
from tests.services.worker.service_fixtures import worker_settings


def registry_for(cluster: ClusterSettings) -> tuple[aioredis.Redis, WorkerRegistry]:
    client = aioredis.from_url(cluster.redis_url)
    return client, WorkerRegistry(client, prefix=cluster.topic_prefix)


def item(request_id: str, max_new_tokens: int) -> worker_pb2.WorkItem:
    return worker_pb2.WorkItem(
        request_id=request_id, prompt="x", params=worker_pb2.SamplingParams(max_new_tokens=max_new_tokens)
    )


async def read_all(call: object) -> list[worker_pb2.GenerateEvent]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        events.append(event)
    return events


async def test_registers_after_start_and_deregisters_on_stop(cluster_settings: ClusterSettings) -> None:
    settings = worker_settings(cluster_settings, worker_advertise_host="worker-1.example")
    client, registry = registry_for(cluster_settings)
    service = WorkerService(settings)
    try:
        await service.start()
        async with asyncio.timeout(5):
            while not (workers := await registry.list()):
                await asyncio.sleep(0.05)
        [info] = workers
        assert info.worker_id == settings.instance_id
        assert info.address == f"worker-1.example:{settings.worker_grpc_port}"
        assert (info.model, info.backend, info.simulated, info.capacity) == ("simulated", "simulated", True, 4)
        assert info.draining is False
        await service.drain(timeout_s=1)
        [info] = await registry.list()
        assert info.draining is True
        await service.stop()
        assert await registry.list() == []
    finally:
        await client.aclose()


async def test_drain_refuses_new_work_and_finishes_in_flight(cluster_settings: ClusterSettings) -> None:
    service = WorkerService(worker_settings(cluster_settings, simulated_tokens_per_s=50.0))
    await service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            in_flight = stub.Generate(worker_pb2.GenerateRequest(items=[item("old", 20)]))
            assert (await in_flight.read()).WhichOneof("event") == "delta"
            drain = asyncio.create_task(service.drain(timeout_s=30))
            await asyncio.sleep(0.05)
            refused = await read_all(stub.Generate(worker_pb2.GenerateRequest(items=[item("new1", 5), item("new2", 5)])))
            assert {e.request_id for e in refused} == {"new1", "new2"}
            assert all(e.failed.code == worker_pb2.FAILURE_CODE_OVERLOADED for e in refused)
            rest = await read_all(in_flight)
            assert rest[-1].finished.reason == worker_pb2.FINISH_REASON_LENGTH
            assert rest[-1].finished.completion_tokens == 20
            await asyncio.wait_for(drain, 5)
    finally:
        await service.stop()


async def test_drain_timeout_fails_in_flight_with_overloaded(cluster_settings: ClusterSettings) -> None:
    service = WorkerService(worker_settings(cluster_settings, simulated_tokens_per_s=10.0))
    await service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            call = stub.Generate(worker_pb2.GenerateRequest(items=[item("slow", 1000)]))
            assert (await call.read()).WhichOneof("event") == "delta"
            began = time.monotonic()
            await service.drain(timeout_s=0.3)
            assert time.monotonic() - began < 3
            events = await read_all(call)
            assert events[-1].failed.code == worker_pb2.FAILURE_CODE_OVERLOADED
    finally:
        await service.stop()


async def test_ops_server_and_metrics(cluster_settings: ClusterSettings) -> None:
    settings = worker_settings(cluster_settings)
    service = WorkerService(settings)
    await service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            await read_all(stub.Generate(worker_pb2.GenerateRequest(items=[item("m1", 4), item("m2", 4)])))
        base = f"http://{settings.worker_host}:{settings.worker_metrics_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/ready")).status_code == 200
            text = (await http.get("/metrics")).text
            labels = 'backend="simulated",model="simulated"'
            assert f"lgc_worker_output_tokens_total{{{labels}}} 8.0" in text
            assert f'lgc_worker_requests_total{{{labels},outcome="length"}} 2.0' in text
            assert f"lgc_worker_ttft_seconds_count{{{labels}}} 2.0" in text
            assert f"lgc_worker_capacity_sequences{{{labels}}} 4.0" in text
            assert "lgc_worker_batch_size_sequences_bucket" in text
            assert "lgc_worker_inter_token_seconds_bucket" in text
            await service.drain(timeout_s=1)
            assert (await http.get("/ready")).status_code == 503
    finally:
        await service.stop()


async def test_publishes_metrics_snapshots(cluster_settings: ClusterSettings) -> None:
    topics = Topics.from_settings(cluster_settings)
    await ensure_topics(cluster_settings, topics.cluster_topics(cluster_settings))
    settings = worker_settings(cluster_settings, metrics_interval_s=0.5)
    service = WorkerService(settings)
    consumer = make_consumer(cluster_settings, topics.metrics, client_id="test-snapshots", group_id=None)
    await consumer.start()
    await service.start()
    try:
        async with asyncio.timeout(60):  # generous: a loaded machine slows the broker a lot
            snapshot = None
            while snapshot is None:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        candidate = MetricsSnapshot.from_bytes(record.value)
                        if candidate.instance == settings.instance_id:
                            snapshot = candidate
        assert snapshot.service == "worker"
        assert snapshot.labels["simulated"] == "true"
        assert snapshot.labels["backend"] == "simulated"
        assert snapshot.values["capacity"] == 4.0
        assert {"running", "waiting", "tokens_per_s", "draining"} <= set(snapshot.values)
    finally:
        await consumer.stop()
        await service.drain(timeout_s=1)
        await service.stop()


async def test_serves_without_kafka(cluster_settings: ClusterSettings) -> None:
    settings = worker_settings(cluster_settings, kafka_bootstrap="127.0.0.1:1", kafka_request_timeout_ms=1000)
    service = WorkerService(settings)
    await asyncio.wait_for(service.start(), 10)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            events = await read_all(
                worker_pb2_grpc.WorkerStub(channel).Generate(worker_pb2.GenerateRequest(items=[item("k", 3)]))
            )
        assert events[-1].finished.completion_tokens == 3
    finally:
        await service.drain(timeout_s=1)
        await asyncio.wait_for(service.stop(), 10)


async def test_port_in_use_fails_clearly(cluster_settings: ClusterSettings) -> None:
    first = WorkerService(worker_settings(cluster_settings))
    await first.start()
    try:
        clash = worker_settings(cluster_settings, worker_grpc_port=first.settings.worker_grpc_port)
        second = WorkerService(clash)
        with pytest.raises(RuntimeError, match="cannot listen"):
            await second.start()
        await second.stop()
    finally:
        await first.drain(timeout_s=1)
        await first.stop()


async def test_second_signal_hurries_the_drain(cluster_settings: ClusterSettings) -> None:
    service = WorkerService(worker_settings(cluster_settings, simulated_tokens_per_s=10.0))
    await service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            call = worker_pb2_grpc.WorkerStub(channel).Generate(worker_pb2.GenerateRequest(items=[item("h", 1000)]))
            assert (await call.read()).WhichOneof("event") == "delta"
            drain = asyncio.create_task(service.drain(timeout_s=60))
            await asyncio.sleep(0.1)
            assert not drain.done()
            service.hurry()
            await asyncio.wait_for(drain, 5)
            events = await read_all(call)
            assert events[-1].failed.code == worker_pb2.FAILURE_CODE_OVERLOADED
    finally:
        await service.stop()


async def test_an_engine_failure_reaches_the_service_from_the_engine_thread(cluster_settings: ClusterSettings) -> None:
    # The engine calls on_failure from its own thread; the service's event loop must wake
    # (`serve` then drains, stops and exits with code 1).
    service = WorkerService(worker_settings(cluster_settings))
    await service.start()
    try:
        assert not service.failed.is_set()
        assert service.engine.on_failure is not None
        thread = threading.Thread(target=service.engine.on_failure, args=("simulated engine failure",))
        thread.start()
        await asyncio.wait_for(service.failed.wait(), 5)
        thread.join()
    finally:
        await service.stop()
