"""DecisionLoop against the real broker: publishes the first decision, then only changes and
heartbeats."""

from __future__ import annotations

from services.scaler.decision_loop import DecisionLoop
from services.scaler.fleet_view import FleetView
from services.scaler.metrics import ScalerMetrics
from services.scaler.policy import UtilizationPolicy
from services.scaler.settings import ScalerSettings
from shared.kafka_clients import make_producer
from shared.records import MetricsSnapshot, ScalingDecision
from shared.topics import Topics
from tests.services.scaler.conftest import read_topic


def _snapshot(at: float, **values: float) -> MetricsSnapshot:
    return MetricsSnapshot(service="worker", instance="worker-0", values=values, created_at=at)


async def test_publishes_on_change_and_as_heartbeat(scaler_settings: ScalerSettings) -> None:
    topics = Topics.from_settings(scaler_settings)
    now = [1_000.0]
    view = FleetView(ttl_s=30)
    metrics = ScalerMetrics()
    producer = make_producer(scaler_settings, client_id="test-scaler")
    await producer.start()
    try:
        loop = DecisionLoop(
            producer, topics, view, UtilizationPolicy(max_replicas=4), metrics,
            interval_s=1, heartbeat_s=60, clock=lambda: now[0],
        )
        view.update(_snapshot(now[0], running=2, capacity=8))
        first = await loop.tick()
        assert first is not None and (first.current, first.desired, first.action) == (1, 1, "hold")
        assert first.actuator == "dry-run" and first.service == "worker"

        now[0] += 5
        assert await loop.tick() is None  # unchanged: nothing published

        view.update(_snapshot(now[0], running=8, waiting=8, capacity=8))
        changed = await loop.tick()
        assert changed is not None and (changed.desired, changed.action) == (3, "scale_up")

        now[0] += 61
        view.update(_snapshot(now[0], running=8, waiting=8, capacity=8))
        heartbeat = await loop.tick()
        assert heartbeat is not None and heartbeat.desired == 3
    finally:
        await producer.stop()

    records = await read_topic(scaler_settings, topics.scaling, 3)
    assert [ScalingDecision.from_bytes(r.value).desired for r in records] == [1, 3, 3]
    assert all(r.key == b"worker" for r in records)
    assert metrics.published.labels("first")._value.get() == 1
    assert metrics.published.labels("changed")._value.get() == 1
    assert metrics.published.labels("heartbeat")._value.get() == 1
    assert metrics.decisions.labels("hold")._value.get() == 2
