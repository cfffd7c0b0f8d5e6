"""Wires the scaler together: Kafka clients, the snapshot consumer, the decision loop, the ops
server and the metrics snapshot publisher, with a start/serve/stop lifecycle."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from services.scaler.decision_loop import DecisionLoop
from services.scaler.fleet_view import FleetView
from services.scaler.metrics import ScalerMetrics
from services.scaler.actuators import make_actuator
from services.scaler.lag_reader import LagReader
from services.scaler.policy import PolicyConfig, ScalingPolicy
from services.scaler.settings import ScalerSettings
from services.scaler.snapshot_consumer import SnapshotConsumer
from shared.background_tasks import run_until_stopped
from shared.kafka_clients import make_consumer, make_producer
from shared.metrics import SnapshotPublisher
from shared.ops_server import OpsServer
from shared.topics import Topics

__all__ = ["ScalerService", "policy_config"]

log = logging.getLogger(__name__)


def policy_config(settings: ScalerSettings) -> PolicyConfig:
    """The policy's parameters from the settings."""
    return PolicyConfig(
        min_replicas=settings.scaler_min_replicas,
        max_replicas=settings.scaler_max_replicas,
        target_utilization=settings.scaler_target_utilization,
        default_capacity=float(settings.scaler_default_worker_capacity),
        lag_target_per_replica=settings.scaler_lag_target_per_replica,
        trend_window_s=settings.scaler_trend_window_s,
        prediction_horizon_s=settings.scaler_prediction_horizon_s,
        scale_up_window_s=settings.scaler_scale_up_window_s,
        scale_down_window_s=settings.scaler_scale_down_window_s,
        scale_up_max_step=settings.scaler_scale_up_max_step,
        scale_down_max_step=settings.scaler_scale_down_max_step,
        scale_to_zero=settings.scaler_scale_to_zero,
        activation_threshold=settings.scaler_activation_threshold,
        error_rate_threshold=settings.scaler_error_rate_threshold,
    )


class ScalerService:
    """One scaler instance (run one per cluster: decisions are not coordinated between scalers)."""

    def __init__(self, settings: ScalerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.metrics = ScalerMetrics(registry)
        self.view = FleetView(settings.scaler_snapshot_ttl_s)
        self.policy = ScalingPolicy(policy_config(settings))
        self.actuator = make_actuator(settings)
        self._ready = False
        client_id = f"lgc-scaler-{settings.instance_id}"
        self._producer = make_producer(settings, client_id=client_id)
        consumer_settings = settings.model_copy(update={"kafka_fetch_max_wait_ms": settings.scaler_fetch_max_wait_ms})
        # "latest": a scaler that starts without a committed offset cares only about fresh load.
        self._consumer = make_consumer(
            consumer_settings,
            self.topics.metrics,
            client_id=client_id,
            group_id=settings.consumer_group,
            auto_offset_reset="latest",
        )
        self.lag_reader = LagReader(
            settings, self.topics, group_id=settings.batcher_group_id, client_id=f"{client_id}-lag"
        )
        self.decisions = DecisionLoop(
            self._producer,
            self.topics,
            self.view,
            self.policy,
            self.metrics,
            interval_s=settings.scaler_interval_s,
            heartbeat_s=settings.scaler_heartbeat_s,
            actuator=self.actuator,
            lag_reader=self.lag_reader,
        )
        self._ops = OpsServer(
            settings.scaler_host, settings.scaler_metrics_port, self.metrics.registry, lambda: self._ready
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        await self.lag_reader.start()
        consumer = SnapshotConsumer(
            self._consumer,
            self._producer,
            self.view,
            self.metrics,
            self.topics,
            consumer_name=f"scaler:{self.settings.instance_id}",
        )
        publisher = SnapshotPublisher(
            self._producer,
            self.topics.metrics,
            lambda: self.metrics.snapshot(self.settings.instance_id),
            self.settings.metrics_interval_s,
        )
        self._tasks = [
            asyncio.create_task(consumer.run(), name="scaler-consumer"),
            asyncio.create_task(self.decisions.run(), name="scaler-decisions"),
            asyncio.create_task(publisher.run(), name="scaler-snapshots"),
        ]
        await self._ops.start()
        self._ready = True
        log.info(
            "scaler ready",
            extra={
                "metrics_port": self.settings.scaler_metrics_port,
                "interval_s": self.settings.scaler_interval_s,
                "min": self.settings.scaler_min_replicas,
                "max": self.settings.scaler_max_replicas,
                "actuator": self.actuator.name,
            },
        )

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; raises if a background task fails."""
        await run_until_stopped(stop, self._tasks, name="scaler")

    async def stop(self) -> None:
        self._ready = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._ops.stop()
        await self._consumer.stop()
        await self.lag_reader.stop()
        await self.actuator.close()
        await self._producer.stop()
