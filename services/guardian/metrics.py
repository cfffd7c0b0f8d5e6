"""The guardian's Prometheus metrics (``lgc_guardian_*``) and its MetricsSnapshot.

`source` labels say where a text came from: `results` (answers on the results topic), `requests`
(prompts on the request topics, when prompt checks are on) or `api` (`POST /v1/guard/check`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.guardian.evaluator import Evaluation
from shared.metrics import MetricsFactory
from shared.records import GuardianVerdict, MetricsSnapshot

__all__ = ["GuardianMetrics"]

#: Seconds, for detector and evaluation latency: 10 µs (regexes) to 5 s (a model on a long batch).
_DETECTOR_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class GuardianMetrics:
    """Every metric the guardian exports, on a registry it is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        m = MetricsFactory("guardian", self.registry)
        self.verdicts = m.counter(
            "verdicts_total", "Verdicts by action and source (results, requests, api).", ["action", "source"]
        )
        self.categories = m.counter(
            "verdict_categories_total", "Findings in verdicts by category.", ["category", "source"]
        )
        self.detector_latency = m.histogram(
            "detector_latency_seconds",
            "Time one detector took per text (a batch call's time divided by its texts).",
            ["detector"],
            buckets=_DETECTOR_BUCKETS,
        )
        self.evaluation_latency = m.histogram(
            "evaluation_latency_seconds",
            "Time to judge one batch (all detectors, concurrently), per evaluated text.",
            ["source"],
            buckets=_DETECTOR_BUCKETS,
        )
        self.records = m.counter(
            "records_total",
            "Records read from Kafka, by source and outcome (evaluated, cached, skipped, deadlettered).",
            ["source", "outcome"],
        )
        self.publish_failures = m.counter(
            "publish_failures_total", "Batches whose verdicts could not be published (re-read)."
        )
        self.consumer_lag = m.gauge(
            "consumer_lag_records", "Records not yet judged (all partitions), at the last fetch.", ["source"]
        )
        self.sample_rate = m.gauge(
            "sample_rate_ratio",
            "Share of texts the expensive detectors run on (1: all; lower while behind; flagged "
            "tenants always get 1).",
            ["source"],
        )
        self.cache = m.counter("verdict_cache_total", "Verdict cache lookups by result (hit, miss).", ["result"])
        self.skipped = m.counter(
            "detector_skipped_total", "Texts an expensive detector was sampled out of.", ["detector"]
        )
        self.batch_size = m.histogram(
            "batch_size_records", "Texts judged per batch.", ["source"], buckets=_BATCH_BUCKETS
        )
        self._totals = {"verdicts": 0, "deadlettered": 0, "cache_hits": 0}
        self._lag: dict[str, int] = {}
        self._rate: dict[str, float] = {}

    def observe(self, evaluation: Evaluation, source: str) -> None:
        """A freshly evaluated verdict."""
        self.verdict(evaluation.verdict, source)
        for detector, seconds in evaluation.detector_seconds.items():
            self.detector_latency.labels(detector).observe(seconds)
        for detector in evaluation.verdict.detectors_skipped:
            self.skipped.labels(detector).inc()
        self.evaluation_latency.labels(source).observe(evaluation.verdict.latency_ms / 1000.0)

    def verdict(self, verdict: GuardianVerdict, source: str) -> None:
        """Any verdict issued (evaluated or from the cache)."""
        self.verdicts.labels(verdict.action.value, source).inc()
        for category in verdict.categories:
            self.categories.labels(category.category, source).inc()
        if source != "api":
            self._totals["verdicts"] += 1

    def cache_lookups(self, hits: int, misses: int) -> None:
        if hits:
            self.cache.labels("hit").inc(hits)
            self._totals["cache_hits"] += hits
        if misses:
            self.cache.labels("miss").inc(misses)

    def record(self, source: str, outcome: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.records.labels(source, outcome).inc(n)
        if outcome == "deadlettered":
            self._totals["deadlettered"] += n

    def lag(self, source: str, records: int) -> None:
        self._lag[source] = records
        self.consumer_lag.labels(source).set(records)

    def rate(self, source: str, rate: float) -> None:
        self._rate[source] = rate
        self.sample_rate.labels(source).set(rate)

    def snapshot(self, instance: str) -> MetricsSnapshot:
        """Key numbers for the scaler and dashboards."""
        return MetricsSnapshot(
            service="guardian",
            instance=instance,
            values={
                "verdicts_total": float(self._totals["verdicts"]),
                "deadlettered_total": float(self._totals["deadlettered"]),
                "cache_hits_total": float(self._totals["cache_hits"]),
                "consumer_lag": float(sum(self._lag.values())),
                "sample_rate": min(self._rate.values(), default=1.0),
            },
        )
