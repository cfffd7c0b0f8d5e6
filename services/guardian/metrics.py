"""The guardian's Prometheus metrics (``lgc_guardian_*``) and its MetricsSnapshot."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.guardian.evaluator import Evaluation
from shared.metrics import MetricsFactory
from shared.records import MetricsSnapshot

__all__ = ["GuardianMetrics"]

#: Seconds, for detector and evaluation latency: 10 µs to 1 s (regex detectors take microseconds).
_DETECTOR_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GuardianMetrics:
    """Every metric the guardian exports, on a registry it is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        m = MetricsFactory("guardian", self.registry)
        self.verdicts = m.counter(
            "verdicts_total",
            "Verdicts by action and source (consumer: from the results topic; api: /v1/guard/check).",
            ["action", "source"],
        )
        self.categories = m.counter(
            "verdict_categories_total", "Findings in verdicts by category.", ["category", "source"]
        )
        self.detector_latency = m.histogram(
            "detector_latency_seconds", "Time one detector took on one text.", ["detector"], buckets=_DETECTOR_BUCKETS
        )
        self.evaluation_latency = m.histogram(
            "evaluation_latency_seconds",
            "Time to judge one text (all detectors).",
            ["source"],
            buckets=_DETECTOR_BUCKETS,
        )
        self.results = m.counter(
            "results_total",
            "Results read from the results topic, by outcome (evaluated, skipped, deadlettered).",
            ["outcome"],
        )
        self.publish_failures = m.counter(
            "publish_failures_total", "Batches whose verdicts could not be published (re-read)."
        )
        self.consumer_lag = m.gauge(
            "consumer_lag_records", "Results not yet judged, per partition, at the last fetch.", ["partition"]
        )
        self._totals = {"verdicts": 0, "deadlettered": 0}
        self._lag: dict[int, int] = {}

    def observe(self, evaluation: Evaluation, source: str) -> None:
        verdict = evaluation.verdict
        self.verdicts.labels(verdict.action.value, source).inc()
        for category in verdict.categories:
            self.categories.labels(category.category, source).inc()
        for detector, seconds in evaluation.detector_seconds.items():
            self.detector_latency.labels(detector).observe(seconds)
        self.evaluation_latency.labels(source).observe(verdict.latency_ms / 1000.0)
        if source == "consumer":
            self._totals["verdicts"] += 1

    def result(self, outcome: str) -> None:
        self.results.labels(outcome).inc()
        if outcome == "deadlettered":
            self._totals["deadlettered"] += 1

    def lag(self, partition: int, records: int) -> None:
        self._lag[partition] = records
        self.consumer_lag.labels(str(partition)).set(records)

    def snapshot(self, instance: str) -> MetricsSnapshot:
        """Key numbers for the scaler and dashboards."""
        return MetricsSnapshot(
            service="guardian",
            instance=instance,
            values={
                "verdicts_total": float(self._totals["verdicts"]),
                "deadlettered_total": float(self._totals["deadlettered"]),
                "consumer_lag": float(sum(self._lag.values())),
            },
        )
