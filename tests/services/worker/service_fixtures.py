"""Builds worker settings for in-process services on free ports, and runs such a service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from shared.launcher.infra import find_free_port
from shared.protos import worker_pb2_grpc
from shared.settings import ClusterSettings

__all__ = ["serving", "worker_settings"]


@contextlib.asynccontextmanager
async def serving(settings: WorkerSettings) -> AsyncIterator[tuple[WorkerService, worker_pb2_grpc.WorkerStub]]:
    """A started in-process worker and a stub on a channel to it; drained and stopped after."""
    service = WorkerService(settings)
    await service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            yield service, worker_pb2_grpc.WorkerStub(channel)
    finally:
        await service.drain(timeout_s=1)
        await service.stop()


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
