"""The gateway's Prometheus metrics (``lgc_gateway_*``) and its MetricsSnapshot for the scaler."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shared.metrics import LATENCY_BUCKETS, TOKEN_LATENCY_BUCKETS, MetricsFactory
from shared.records import MetricsSnapshot

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    """Every metric the gateway exports, on a registry it is given."""

    def __init__(self, registry: CollectorRegistry, *, instance: str, max_inflight: int) -> None:
        self.instance = instance
        self.max_inflight = max_inflight
        factory = MetricsFactory("gateway", registry)
        self.requests = factory.counter(
            "requests_total",
            "Requests finished, by API endpoint, outcome (ok or the error's reason) and priority.",
            ("endpoint", "outcome", "priority"),
        )
        self.inflight = factory.gauge("inflight_requests", "Requests being served right now.")
        self.inflight_limit = factory.gauge("inflight_limit_requests", "Most requests served at once.")
        self.inflight_limit.set(max_inflight)
        self.latency = factory.histogram(
            "request_duration_seconds",
            "End-to-end latency from admission to the last byte of the answer, by endpoint and priority.",
            ("endpoint", "priority"),
            buckets=LATENCY_BUCKETS,
        )
        self.ttft = factory.histogram(
            "ttft_seconds",
            "Time to first token of streamed answers (admission to the first delta), by endpoint and priority.",
            ("endpoint", "priority"),
            buckets=TOKEN_LATENCY_BUCKETS,
        )
        self.completion_tokens = factory.counter(
            "completion_tokens_total", "Tokens generated for this gateway's clients."
        )
        self.prompt_tokens = factory.counter("prompt_tokens_total", "Prompt tokens of this gateway's requests.")
        self.reply_events = factory.counter(
            "reply_events_total",
            "Records read from the reply topic, by result (delivered, duplicate, stale, dead_lettered).",
            ("result",),
        )
        self.cancellations = factory.counter(
            "cancellations_total", "Cancel records sent, by reason.", ("reason",)
        )
        self.cache_hits = factory.counter(
            "cache_hits_total", "Requests answered from a cache, by kind (hit-exact, hit-semantic).", ("kind",)
        )
        self.cache_purged = factory.counter(
            "cache_purged_entries_total", "Cache entries deleted because the guardian flagged their request."
        )
        self.guard_checks = factory.counter(
            "guard_checks_total",
            "Synchronous guardian checks of blocking-mode tenants' answers, by result (allow, flag, "
            "redact, block, unavailable, failed_open).",
            ["result"],
        )
        self.request_lag = factory.gauge(
            "request_lag_records", "Records waiting in the request topics, as last measured (lag bound on)."
        )
        self._ok = 0
        self._errors = 0
        self._inflight = 0

    def observe_request(self, endpoint: str, outcome: str, priority: str, seconds: float) -> None:
        """Count a finished request and its latency."""
        self.requests.labels(endpoint=endpoint, outcome=outcome, priority=priority).inc()
        self.latency.labels(endpoint=endpoint, priority=priority).observe(seconds)
        if outcome == "ok":
            self._ok += 1
        else:
            self._errors += 1

    def set_inflight(self, n: int) -> None:
        """Record how many requests are being served."""
        self._inflight = n
        self.inflight.set(n)

    def snapshot(self) -> MetricsSnapshot:
        """Key numbers for the scaler."""
        return MetricsSnapshot(
            service="gateway",
            instance=self.instance,
            values={
                "inflight": float(self._inflight),
                "max_inflight": float(self.max_inflight),
                "requests_ok_total": float(self._ok),
                "requests_error_total": float(self._errors),
            },
        )
