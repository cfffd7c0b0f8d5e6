"""The batcher's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shared.metrics import TOKEN_LATENCY_BUCKETS, MetricsFactory

__all__ = ["BatcherMetrics"]


class BatcherMetrics:
    """Every metric the batcher exports, on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        m = MetricsFactory("batcher", registry)
        self.registry = registry
        self.requests = m.counter("requests_total", "Requests ended, by priority and outcome.", ["priority", "outcome"])
        self.queue_seconds = m.histogram("queue_seconds", "From request creation to dispatch.", ["priority"])
        self.ttft_seconds = m.histogram(
            "ttft_seconds", "From dispatch to the first token.", buckets=TOKEN_LATENCY_BUCKETS
        )
        self.batch_size = m.histogram(
            "batch_size", "Requests per micro-batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.inflight = m.gauge("inflight_requests", "Requests taken from Kafka and not yet ended.")
        self.credits = m.gauge("credits", "Requests this batcher may have in flight now.")
        self.workers = m.gauge("workers", "Workers known from the registry.")
        self.worker_outstanding = m.gauge(
            "worker_outstanding_requests", "Requests outstanding on each worker.", ["worker"]
        )
        self.worker_failures = m.counter("worker_failures_total", "Broken worker streams.", ["worker"])
        self.worker_stalls = m.counter(
            "worker_stalls_total", "Worker streams cancelled because they went silent and the worker did not answer.",
            ["worker"],
        )
        self.retries = m.counter("retries_total", "Requests sent to another worker after a failure.")
        self.held_answers = m.counter(
            "held_answers_total",
            "Blocking-mode answers judged before leaving, by outcome (allow, flag, redact, block, unavailable).",
            ["outcome"],
        )
        self.deadlettered = m.counter("deadlettered_total", "Records sent to the dead-letter topic.", ["topic"])
        self.paused = m.gauge(
            "paused", "1 while a priority level's partitions are paused (credits or higher priority).", ["priority"]
        )
        self.worker_outstanding_tokens = m.gauge(
            "worker_outstanding_tokens", "Tokens (max_new_tokens left) outstanding on each worker.", ["worker"]
        )
        self.worker_batches = m.counter("worker_batches_total", "Micro-batches sent to each worker.", ["worker"])
        self.worker_requests = m.counter("worker_requests_total", "Requests sent to each worker.", ["worker"])
        self.aging_waits = m.counter(
            "aged_batches_total", "Fetch rounds where a level was served ahead of higher ones by aging.", ["priority"]
        )
        self.parked_partitions = m.gauge(
            "parked_partitions", "Request partitions paused by the doorbell (read past everything announced)."
        )
        self.doorbell_rings = m.counter("doorbell_rings_total", "Doorbell rings received for the request topics.")
        self.unannounced_reads = m.counter(
            "doorbell_unannounced_total", "Fetches that brought records nobody announced (parking then stops a while)."
        )
