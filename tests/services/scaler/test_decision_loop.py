"""DecisionLoop against the real broker: publishes the first decision, then only changes and
heartbeats; hands desired counts to its actuator and retries when that fails."""

from __future__ import annotations

from services.scaler.decision_loop import DecisionLoop
from services.scaler.fleet_view import FleetView
from services.scaler.metrics import ScalerMetrics
from services.scaler.actuators import ActuationError
from services.scaler.policy import PolicyConfig, ScalingPolicy
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
            producer, topics, view, ScalingPolicy(PolicyConfig(max_replicas=4, prediction_horizon_s=0)), metrics,
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


class RecordingActuator:
    """An actuator that runs `replicas` and records what it is asked (fails when told to)."""

    name = "local"

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.applied: list[int] = []
        self.fail = False

    async def current(self) -> int | None:
        return self.replicas

    async def apply(self, desired: int) -> None:
        if self.fail:
            raise ActuationError("backend down")
        self.applied.append(desired)

    async def close(self) -> None:
        return None


async def test_actuator_count_is_current_and_desired_counts_are_applied(scaler_settings: ScalerSettings) -> None:
    topics = Topics.from_settings(scaler_settings)
    now = [1_000.0]
    view = FleetView(ttl_s=30)
    metrics = ScalerMetrics()
    actuator = RecordingActuator(replicas=1)
    producer = make_producer(scaler_settings, client_id="test-scaler")
    await producer.start()
    try:
        loop = DecisionLoop(
            producer, topics, view, ScalingPolicy(PolicyConfig(max_replicas=4, prediction_horizon_s=0)), metrics,
            interval_s=1, heartbeat_s=60, actuator=actuator, clock=lambda: now[0],
        )
        view.update(_snapshot(now[0], running=8, waiting=8, capacity=8))
        actuator.fail = True
        first = await loop.tick()
        assert first is not None and (first.current, first.desired, first.actuator) == (1, 3, "local")
        assert metrics.actuations.labels("local", "failed")._value.get() == 1

        actuator.fail = False
        now[0] += 1
        await loop.tick()  # not yet applied: tried again
        assert actuator.applied == [3]
        now[0] += 1
        await loop.tick()  # still 1 running while the workers start: the same count again
        assert actuator.applied == [3, 3]
        actuator.replicas = 3
        now[0] += 1
        await loop.tick()  # converged: nothing to do
        assert actuator.applied == [3, 3]
        assert metrics.actuations.labels("local", "ok")._value.get() == 2
    finally:
        await producer.stop()
