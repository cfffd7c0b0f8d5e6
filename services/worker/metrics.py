"""The worker's Prometheus metrics (``lgc_worker_*``) and its MetricsSnapshot for the scaler.

Engines report through the :class:`EngineObserver` methods (possibly from their own thread; the
Prometheus client and the counters here are thread-safe); the gRPC layer reports outcomes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from services.worker.engine import EngineEvent, EngineInfo, SequenceFailed, SequenceFinished
from shared.metrics import LATENCY_BUCKETS, TOKEN_LATENCY_BUCKETS, MetricsFactory
from shared.records import MetricsSnapshot

__all__ = ["BATCH_SIZE_BUCKETS", "WorkerMetrics"]

#: Sequences per decode step.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class WorkerMetrics:
    """Every metric of one worker, labelled with its model and backend."""

    def __init__(self, registry: CollectorRegistry, instance: str) -> None:
        factory = MetricsFactory("worker", registry)
        labels = ("model", "backend")
        self.instance = instance
        self._ttft = factory.histogram(
            "ttft_seconds", "Receipt to first generated token.", labels, TOKEN_LATENCY_BUCKETS
        )
        self._inter_token = factory.histogram(
            "inter_token_seconds",
            "Time between two tokens of a sequence (one decode step).",
            labels,
            TOKEN_LATENCY_BUCKETS,
        )
        self._e2e = factory.histogram(
            "request_duration_seconds",
            "Receipt to the end of a sequence, whatever the outcome.",
            labels,
            LATENCY_BUCKETS,
        )
        self._output_tokens = factory.counter("output_tokens_total", "Tokens generated.", labels)
        self._prompt_tokens = factory.counter("prompt_tokens_total", "Prompt tokens of finished sequences.", labels)
        self._batch_size = factory.histogram(
            "batch_size_sequences", "Sequences in each decode step.", labels, BATCH_SIZE_BUCKETS
        )
        self._requests = factory.counter(
            "requests_total",
            "Sequences ended, by outcome (stop, length, cancelled, or the failure code).",
            (*labels, "outcome"),
        )
        self._running = factory.gauge("running_sequences", "Sequences generating now.", labels)
        self._waiting = factory.gauge("waiting_sequences", "Sequences accepted, not yet generating.", labels)
        self._capacity = factory.gauge("capacity_sequences", "Most sequences generated at once.", labels)
        self._kv_tokens = factory.gauge(
            "kv_cache_tokens", "Token slots held in the KV cache (rows x length, left padding included).", labels
        )
        self._kv_bytes = factory.gauge("kv_cache_bytes", "Bytes of the KV cache's key and value tensors.", labels)
        self._prefix_reused = factory.counter(
            "prefix_reused_tokens_total",
            "Prompt tokens not run because their keys and values came from a shared prefix.",
            labels,
        )
        self._draining = factory.gauge("draining", "1 while finishing in-flight work before stopping.", labels)
        self._info = factory.gauge(
            "info", "Always 1; the labels describe the worker.", (*labels, "simulated", "device", "dtype")
        )
        self._labels: tuple[str, str] = ("unknown", "unknown")
        self._lock = threading.Lock()
        self._tokens = 0
        self._ended = {"finished": 0, "failed": 0}
        self._last_take = (time.monotonic(), 0, 0, 0)
        self._load: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self._draining_now: Callable[[], bool] = lambda: False
        self._engine_info: EngineInfo | None = None
        self._kv_now = (0, 0)

    def bind(self, info: EngineInfo, load: Callable[[], tuple[int, int]], draining: Callable[[], bool]) -> None:
        """Attach the loaded engine: labels, capacity, and live (running, waiting) and draining."""
        self._engine_info = info
        self._labels = (info.model, info.backend)
        self._load = load
        self._draining_now = draining
        self._running.labels(*self._labels).set_function(lambda: load()[0])
        self._waiting.labels(*self._labels).set_function(lambda: load()[1])
        self._capacity.labels(*self._labels).set(info.max_batch_size)
        self._draining.labels(*self._labels).set_function(lambda: 1.0 if draining() else 0.0)
        self._info.labels(*self._labels, str(info.simulated).lower(), info.device, info.dtype).set(1)

    # EngineObserver ---------------------------------------------------------------------------

    def first_token(self, ttft_s: float) -> None:
        self._ttft.labels(*self._labels).observe(ttft_s)

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        self._batch_size.labels(*self._labels).observe(batch_size)
        self._inter_token.labels(*self._labels).observe(duration_s)

    def tokens(self, count: int) -> None:
        self._output_tokens.labels(*self._labels).inc(count)
        with self._lock:
            self._tokens += count

    def kv_cache(self, tokens: int, nbytes: int) -> None:
        self._kv_tokens.labels(*self._labels).set(tokens)
        self._kv_bytes.labels(*self._labels).set(nbytes)
        self._kv_now = (tokens, nbytes)

    def prefix_reused(self, tokens: int) -> None:
        self._prefix_reused.labels(*self._labels).inc(tokens)

    # outcomes (event loop) --------------------------------------------------------------------

    def ended(self, event: EngineEvent) -> None:
        """Count a sequence's terminal event."""
        if isinstance(event, SequenceFinished):
            outcome = event.reason.value
            self._e2e.labels(*self._labels).observe(event.total_ms / 1000.0)
            self._prompt_tokens.labels(*self._labels).inc(event.prompt_tokens)
            kind = "finished"
        elif isinstance(event, SequenceFailed):
            outcome = event.code.value
            kind = "failed"
        else:
            return
        self._requests.labels(*self._labels, outcome).inc()
        with self._lock:
            self._ended[kind] += 1

    # snapshot ---------------------------------------------------------------------------------

    def snapshot(self, address: str) -> MetricsSnapshot:
        """Key numbers for the scaler; rates are over the time since the previous snapshot."""
        now = time.monotonic()
        with self._lock:
            tokens, finished, failed = self._tokens, self._ended["finished"], self._ended["failed"]
        then, tokens_then, finished_then, failed_then = self._last_take
        self._last_take = (now, tokens, finished, failed)
        elapsed = max(now - then, 1e-6)
        running, waiting = self._load()
        info = self._engine_info
        capacity = info.max_batch_size if info is not None else 0
        values = {
            "running": float(running),
            "waiting": float(waiting),
            "capacity": float(capacity),
            "utilization": running / capacity if capacity else 0.0,
            "tokens_per_s": (tokens - tokens_then) / elapsed,
            "finished_per_s": (finished - finished_then) / elapsed,
            "failed_per_s": (failed - failed_then) / elapsed,
            "draining": 1.0 if self._draining_now() else 0.0,
            "kv_cache_tokens": float(self._kv_now[0]),
            "kv_cache_bytes": float(self._kv_now[1]),
        }
        labels = {"model": self._labels[0], "backend": self._labels[1], "address": address}
        labels["simulated"] = "true" if info is not None and info.simulated else "false"
        return MetricsSnapshot(service="worker", instance=self.instance, values=values, labels=labels)
