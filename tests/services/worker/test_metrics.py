"""Worker metrics and the MetricsSnapshot for the scaler."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from services.worker.engine import EngineInfo, FailureCode, FinishReason, SequenceFailed, SequenceFinished
from services.worker.metrics import WorkerMetrics

INFO = EngineInfo("m1", "transformers", "cpu", "bfloat16", max_batch_size=8, max_model_len=2048, simulated=False)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model": "m1", "backend": "transformers", **labels})


def test_observations_land_in_labelled_metrics() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, "w1")
    load = [3, 2]
    metrics.bind(INFO, lambda: (load[0], load[1]), lambda: False)
    metrics.first_token(0.2)
    metrics.decode_step(3, 0.05)
    metrics.tokens(7)
    metrics.ended(SequenceFinished("a", FinishReason.STOP, 10, 7, 200.0, 900.0))
    metrics.ended(SequenceFailed("b", FailureCode.DEADLINE_EXCEEDED, "late"))
    assert sample(registry, "lgc_worker_ttft_seconds_count") == 1
    assert sample(registry, "lgc_worker_inter_token_seconds_sum") == 0.05
    assert sample(registry, "lgc_worker_batch_size_sequences_sum") == 3
    assert sample(registry, "lgc_worker_output_tokens_total") == 7
    assert sample(registry, "lgc_worker_prompt_tokens_total") == 10
    assert sample(registry, "lgc_worker_request_duration_seconds_sum") == 0.9
    assert sample(registry, "lgc_worker_requests_total", outcome="stop") == 1
    assert sample(registry, "lgc_worker_requests_total", outcome="deadline_exceeded") == 1
    assert sample(registry, "lgc_worker_running_sequences") == 3
    load[0] = 5
    assert sample(registry, "lgc_worker_running_sequences") == 5  # live, read at scrape time
    assert sample(registry, "lgc_worker_capacity_sequences") == 8
    assert sample(registry, "lgc_worker_info", simulated="false", device="cpu", dtype="bfloat16") == 1


def test_snapshot_rates_cover_the_time_since_the_last_one() -> None:
    metrics = WorkerMetrics(CollectorRegistry(), "w1")
    metrics.bind(INFO, lambda: (4, 1), lambda: True)
    metrics.snapshot("h:1")
    metrics.tokens(50)
    time.sleep(0.1)
    snapshot = metrics.snapshot("h:1")
    assert snapshot.service == "worker" and snapshot.instance == "w1"
    assert 50 / 0.5 < snapshot.values["tokens_per_s"] <= 50 / 0.1
    assert snapshot.values["running"] == 4 and snapshot.values["waiting"] == 1
    assert snapshot.values["capacity"] == 8 and snapshot.values["utilization"] == 0.5
    assert snapshot.values["draining"] == 1.0
    assert snapshot.labels == {"model": "m1", "backend": "transformers", "address": "h:1", "simulated": "false"}
    assert metrics.snapshot("h:1").values["tokens_per_s"] == 0.0


def test_kv_cache_usage_in_gauges_and_snapshot() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, "w1")
    metrics.bind(INFO, lambda: (2, 0), lambda: False)
    metrics.kv_cache(120, 120 * 4096)
    assert sample(registry, "lgc_worker_kv_cache_tokens") == 120
    assert sample(registry, "lgc_worker_kv_cache_bytes") == 120 * 4096
    values = metrics.snapshot("127.0.0.1:1").values
    assert (values["kv_cache_tokens"], values["kv_cache_bytes"]) == (120, 120 * 4096)
    metrics.kv_cache(0, 0)
    assert sample(registry, "lgc_worker_kv_cache_bytes") == 0
