"""The request-topic lag bound on the real Tansu broker: records nobody consumed count as lag and
make the gateway refuse with 429 + Retry-After; once the batcher group commits past them, it admits
again."""

from __future__ import annotations

import asyncio

import httpx
from aiokafka import TopicPartition

from shared.kafka_clients import make_consumer, make_producer
from shared.records import GenerationRequest, Priority
from shared.settings import ClusterSettings
from shared.topics import Topics

from services.gateway.backpressure import RequestLagMonitor

from tests.services.gateway.conftest import FAKE_MODEL, FakeBatcher, gateway_settings


async def test_monitor_disabled_by_default(cluster_settings: ClusterSettings) -> None:
    monitor = RequestLagMonitor(gateway_settings(cluster_settings), ("x",))
    assert not monitor.enabled
    await monitor.start()
    await monitor.check()  # never refuses, never connects
    await monitor.stop()


async def test_lag_bound_refuses_then_admits(
    start_gateway, cluster_settings: ClusterSettings, fake_batcher: FakeBatcher, registered_worker
) -> None:
    group = f"{cluster_settings.topic_prefix}-batchers"
    service = await start_gateway(gateway_max_request_lag=2, gateway_lag_check_interval_s=0.05, gateway_batcher_group_id=group)
    topics = Topics.from_settings(cluster_settings)
    producer = make_producer(cluster_settings, client_id="lag-test")
    await producer.start()
    try:
        for i in range(3):
            # No reply_to: the fake batcher records them but does not answer (nor commit).
            backlog = GenerationRequest(id=f"backlog-{i}", model=FAKE_MODEL, prompt="waiting")
            await producer.send_and_wait(topics.requests(Priority.NORMAL), backlog.to_bytes(), key=backlog.id)
    finally:
        await producer.stop()
    url = f"http://127.0.0.1:{service.http_port}/v1/completions"
    async with httpx.AsyncClient(timeout=20) as http:
        refused = await http.post(url, json={"model": FAKE_MODEL, "prompt": "hi"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert "3 requests are waiting" in refused.json()["error"]["message"]

        # The batchers catch up: their group commits the end offsets.
        consumer = make_consumer(cluster_settings, client_id="lag-test-c", group_id=group)
        await consumer.start()
        try:
            parts = [TopicPartition(t, p) for t in topics.all_requests for p in range(cluster_settings.request_topic_partitions)]
            ends = await consumer.end_offsets(parts)
            consumer.assign(parts)
            await consumer.commit({tp: off for tp, off in ends.items()})
        finally:
            await consumer.stop()
        await asyncio.sleep(0.1)  # past the reuse interval of the last measurement
        admitted = await http.post(url, json={"model": FAKE_MODEL, "prompt": "hi"})
    assert admitted.status_code == 200
    assert service.registry.get_sample_value("lgc_gateway_request_lag_records") == 0
