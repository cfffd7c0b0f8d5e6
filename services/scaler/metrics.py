"""The scaler's Prometheus metrics (``lgc_scaler_*``) and its MetricsSnapshot."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.scaler.policy import PolicyDecision
from shared.metrics import MetricsFactory
from shared.records import MetricsSnapshot

__all__ = ["ScalerMetrics"]


class ScalerMetrics:
    """Every metric the scaler exports, on a registry it is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        m = MetricsFactory("scaler", self.registry)
        self.current_replicas = m.gauge(
            "current_replicas", "Workers that existed at the last decision (the actuator's count, else those reporting)."
        )
        self.desired_replicas = m.gauge("desired_replicas", "Workers the policy wanted at the last decision.")
        self.utilization = m.gauge("utilization_ratio", "Running plus waiting sequences over total capacity.")
        self.decisions = m.counter("decisions_total", "Decisions computed, by action.", ["action"])
        self.signal = m.gauge("signal_value", "Each input and intermediate value of the last decision.", ["signal"])
        self.consumer_lag = m.gauge(
            "consumer_lag_records", "Unfinished requests of the batcher group per priority topic.", ["priority"]
        )
        self.actuations = m.counter(
            "actuations_total", "Desired counts handed to the actuator, by actuator and outcome.", ["actuator", "outcome"]
        )
        self.published = m.counter(
            "decisions_published_total", "Decisions published to the scaling topic, by why.", ["why"]
        )
        self.snapshots = m.counter("snapshots_total", "Metrics snapshots read, by service.", ["service"])
        self.deadlettered = m.counter("deadlettered_total", "Unparseable records sent to the dead-letter topic.")
        self._last: PolicyDecision | None = None

    def observe(self, decision: PolicyDecision) -> None:
        self._last = decision
        self.current_replicas.set(decision.current)
        self.desired_replicas.set(decision.desired)
        self.utilization.set(decision.signals.get("utilization", 0.0))
        self.decisions.labels(decision.action).inc()
        for name, value in decision.signals.items():
            self.signal.labels(name).set(value)
            if name.startswith("lag_") and name != "lag_replicas":
                self.consumer_lag.labels(name.removeprefix("lag_")).set(value)

    def snapshot(self, instance: str) -> MetricsSnapshot:
        last = self._last
        values = {"current_replicas": 0.0, "desired_replicas": 0.0} if last is None else {
            "current_replicas": float(last.current),
            "desired_replicas": float(last.desired),
        }
        return MetricsSnapshot(service="scaler", instance=instance, values=values)
