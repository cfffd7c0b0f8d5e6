"""Builds worker settings for in-process services on free ports."""

from __future__ import annotations

from services.worker.settings import WorkerSettings
from shared.launcher.infra import find_free_port
from shared.settings import ClusterSettings

__all__ = ["worker_settings"]


def worker_settings(cluster: ClusterSettings, **overrides: object) -> WorkerSettings:
    """WorkerSettings on the test cluster, with free gRPC and metrics ports."""
    values: dict[str, object] = cluster.model_dump()
    values.update(
        worker_backend="simulated",
        worker_grpc_port=find_free_port(),
        worker_metrics_port=find_free_port(),
        simulated_tokens_per_s=100.0,
        simulated_ttft_ms=10.0,
        worker_max_batch_size=4,
        worker_registry_ttl_s=3.0,
        metrics_interval_s=60.0,  # tests that read snapshots ask for a shorter interval
    )
    values.update(overrides)
    return WorkerSettings(**values)  # type: ignore[arg-type]
