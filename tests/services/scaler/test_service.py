"""ScalerService against the real broker: worker snapshots on the metrics topic -> a scaling
decision on the scaling topic; garbage -> dead-letter topic; ops routes served."""

from __future__ import annotations

import asyncio

import httpx

from services.scaler.service import ScalerService
from services.scaler.settings import ScalerSettings
from shared.deadletter import dead_letter_from_headers
from shared.kafka_clients import make_producer
from shared.records import MetricsSnapshot, Priority, ScalingDecision
from shared.topics import Topics
from tests.services.scaler.conftest import first_matching, read_topic


async def test_worker_snapshots_become_a_scaling_decision(scaler_settings: ScalerSettings) -> None:
    topics = Topics.from_settings(scaler_settings)
    service = ScalerService(scaler_settings)
    await service.start()  # returns once the consumer owns the metrics partitions
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{scaler_settings.scaler_metrics_port}") as client:
            assert (await client.get("/ready")).status_code == 200

        producer = make_producer(scaler_settings, client_id="test-workers")
        await producer.start()
        try:
            for i in range(2):
                snapshot = MetricsSnapshot(
                    service="worker", instance=f"worker-{i}", values={"running": 8, "waiting": 4, "capacity": 8}
                )
                await producer.send_and_wait(topics.metrics, snapshot.to_bytes(), key=snapshot.instance)
            await producer.send_and_wait(topics.metrics, b"\xff not a snapshot", key="worker-9")
        finally:
            await producer.stop()

        # 24 sequences / (8 * 0.8) = 3.75 -> 4 workers wanted, 2 reporting.
        record = await first_matching(
            scaler_settings, topics.scaling, lambda r: ScalingDecision.from_bytes(r.value).current == 2
        )
        assert record is not None, "no decision based on the two workers"
        decision = ScalingDecision.from_bytes(record.value)
        assert (decision.desired, decision.action, decision.actuator) == (4, "scale_up", "dry-run")
        assert decision.signals["running"] == 16 and decision.signals["waiting"] == 8
        assert "needs 4" in decision.reason
        assert decision.signals["lag"] == 0.0 and "consumer lag 0" in decision.reason

        [dead] = await read_topic(scaler_settings, topics.deadletter, 1)
        assert dead.value == b"\xff not a snapshot"
        assert dead_letter_from_headers(dead.headers).error.startswith("invalid MetricsSnapshot")

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{scaler_settings.scaler_metrics_port}") as client:
            for _ in range(50):
                text = (await client.get("/metrics")).text
                if "lgc_scaler_desired_replicas 4.0" in text:
                    break
                await asyncio.sleep(0.1)
        assert "lgc_scaler_desired_replicas 4.0" in text
        assert 'lgc_scaler_snapshots_total{service="worker"} 2.0' in text
        assert 'lgc_scaler_signal_value{signal="running"} 16.0' in text
        assert 'lgc_scaler_consumer_lag_records{priority="high"} 0.0' in text
        assert 'lgc_scaler_decisions_total{action="scale_up"}' in text
    finally:
        await service.stop()
    assert not service.ready


async def test_consumer_lag_alone_drives_a_decision(scaler_settings: ScalerSettings) -> None:
    """Requests waiting in Kafka with no worker reporting: the lag (uncommitted by the batcher
    group) asks for ceil(lag / target) workers."""
    settings = scaler_settings.model_copy(update={"scaler_lag_target_per_replica": 2.0})
    topics = Topics.from_settings(settings)
    producer = make_producer(settings, client_id="test-gateway")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topics.requests(Priority.NORMAL), b"{}", key=f"r{i}")
    finally:
        await producer.stop()
    service = ScalerService(settings)
    await service.start()
    try:
        record = await first_matching(settings, topics.scaling, lambda r: ScalingDecision.from_bytes(r.value).desired > 1)
    finally:
        await service.stop()
    assert record is not None, "no decision driven by the lag"
    decision = ScalingDecision.from_bytes(record.value)
    assert (decision.current, decision.desired, decision.action) == (0, 3, "scale_up")  # ceil(5 / 2)
    assert decision.signals["lag_normal"] == 5.0 and decision.signals["lag_replicas"] == 2.5
    assert "consumer lag 5 (high 0, low 0, normal 5) at 2 per replica -> 2.50 replicas" in decision.reason
