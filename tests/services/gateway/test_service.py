"""The gateway service's lifecycle on the real broker and Redis: topics, readiness, metrics
snapshots, ports, and clean failure."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka_clients import make_consumer
from shared.launcher.infra import find_free_port
from shared.records import MetricsSnapshot
from shared.settings import ClusterSettings
from shared.topics import Topics

from services.gateway.service import GatewayService, serve

from tests.services.gateway.conftest import ANSWER, FakeBatcher, gateway_settings


async def list_topics(settings: ClusterSettings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_start_creates_topics_serves_and_stops(
    cluster_settings: ClusterSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gateway_settings(cluster_settings, instance_id="gw-one")
    service = GatewayService(settings)
    assert not service.ready()
    with caplog.at_level(logging.INFO):
        await service.start()
    try:
        assert service.ready()
        assert any("runs OPEN" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        topics = Topics.from_settings(settings)
        existing = await list_topics(settings)
        assert topics.replies("gw-one") in existing and set(topics.all_requests) <= existing
        assert service.http_port and service.grpc_port and service.http_port != 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            assert (await http.get("/ready")).status_code == 200
    finally:
        await service.stop()
    assert not service.ready()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{service.http_port}/health")


async def test_publishes_metrics_snapshots(cluster_settings: ClusterSettings, start_gateway) -> None:
    topics = Topics.from_settings(cluster_settings)
    service = await start_gateway(instance_id="gw-metrics", metrics_interval_s=0.2)
    consumer = make_consumer(cluster_settings, topics.metrics, client_id="metrics-reader", group_id=None)
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    snapshot = MetricsSnapshot.from_bytes(record.value)
    assert record.key == b"gw-metrics"
    assert snapshot.service == "gateway" and snapshot.instance == "gw-metrics"
    assert snapshot.values["max_inflight"] == service.settings.gateway_max_inflight
    assert snapshot.values["inflight"] == 0


async def test_busy_port_fails_start_cleanly(cluster_settings: ClusterSettings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        service = GatewayService(gateway_settings(cluster_settings, gateway_http_port=busy.getsockname()[1]))
        with pytest.raises(OSError):
            await service.start()
    assert not service.ready()
    assert service._producer is None and service._router is None  # everything started was stopped


async def test_serve_runs_until_the_event(cluster_settings: ClusterSettings) -> None:
    port = find_free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(gateway_settings(cluster_settings, gateway_http_port=port), stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        async with asyncio.timeout(15):
            while True:  # start-up only: ask until it answers
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass  # not listening yet
                await asyncio.sleep(0.05)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 15)
    assert task.exception() is None


@pytest.mark.usefixtures("registered_worker")
async def test_stop_lets_in_flight_requests_finish(cluster_settings: ClusterSettings, fake_batcher: FakeBatcher) -> None:
    service = GatewayService(gateway_settings(cluster_settings, gateway_shutdown_grace_s=5))
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=10) as http:
            slow = asyncio.create_task(http.post("/v1/completions", json={"prompt": "[slow]"}))
            await fake_batcher.wait_for_requests(1)
            stopping = asyncio.create_task(service.stop())
            response = await slow
            await stopping
    finally:
        await service.stop()
    assert response.status_code == 200 and response.json()["choices"][0]["text"] == ANSWER


@pytest.mark.usefixtures("registered_worker")
async def test_stop_cuts_off_requests_after_the_grace_period(
    cluster_settings: ClusterSettings, fake_batcher: FakeBatcher
) -> None:
    service = GatewayService(gateway_settings(cluster_settings, gateway_shutdown_grace_s=0.3))
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=10) as http:
            held = asyncio.create_task(http.post("/v1/completions", json={"prompt": "[hold]"}))
            (request,) = await fake_batcher.wait_for_requests(1)
            await asyncio.wait_for(service.stop(), 10)
            await asyncio.gather(held, return_exceptions=True)
    finally:
        await service.stop()
    # The cluster is told to stop working on it (the Cancel was sent before the producer stopped).
    assert (await fake_batcher.wait_for_cancel(request.id)).reason == "client_disconnected"


async def test_keep_alive_responses_are_not_delayed(start_gateway) -> None:
    # Without TCP_NODELAY on accepted connections, every response on a reused connection waits
    # for the client's delayed ACK (about 40 ms on Linux).
    service = await start_gateway()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
        await http.get("/health")
        took = []
        for _ in range(15):
            started = time.perf_counter()
            await http.get("/health")
            took.append(time.perf_counter() - started)
    assert sorted(took)[len(took) // 2] < 0.035
