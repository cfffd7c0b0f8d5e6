"""The batcher's settings (``LGC_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings import ClusterSettings

__all__ = ["BatcherSettings"]


class BatcherSettings(ClusterSettings):
    """Everything the batcher reads from the environment."""

    batcher_host: str = Field("127.0.0.1", min_length=1)
    """Address the ops server (/metrics, /health, /ready) binds to."""

    batcher_metrics_port: int = Field(9101, ge=1, le=65_535)
    """Port of the ops server."""

    batcher_group_id: str = Field("lgc-batcher", pattern=r"^[A-Za-z0-9._-]+$")
    """Consumer group all batcher instances share on the request topics."""

    batcher_max_batch_size: int = Field(32, ge=1, le=1_024)
    """Most requests in one micro-batch sent to a worker."""

    batcher_max_wait_ms: int = Field(5, ge=0, le=10_000)
    """Longest a fetch waits for more records to fill a batch when some are already there."""

    batcher_token_budget: int = Field(65_536, ge=1)
    """Most `max_new_tokens` summed over one micro-batch."""

    batcher_max_inflight: int = Field(512, ge=1, le=100_000)
    """Most requests taken from Kafka and not yet finished; beyond it partitions are paused."""

    batcher_credits_per_slot: float = Field(2.0, gt=0, le=64)
    """Requests in flight per worker batch slot (2 = one running plus one waiting batch)."""

    batcher_max_attempts: int = Field(3, ge=1, le=10)
    """Tries per request (on different workers when possible) before it fails with worker_failed."""

    batcher_lb_policy: Literal["round_robin", "least_outstanding"] = "least_outstanding"
    """How a worker is chosen for a batch."""

    batcher_registry_refresh_s: float = Field(5.0, gt=0, le=300)
    """Longest between two reads of the worker registry (changes are also pushed)."""

    batcher_rpc_timeout_s: float = Field(600.0, gt=0)
    """Longest one Generate call to a worker may take when its requests carry no deadline."""

    batcher_no_worker_wait_s: float = Field(30.0, ge=0, le=3_600)
    """How long a batch waits for a worker serving its model to appear before it fails
    (`no_workers` / `model_not_found`); a request's deadline shortens it."""

    batcher_shutdown_grace_s: float = Field(30.0, ge=0, le=3_600)
    """On SIGTERM, how long in-flight requests may run to completion before the batcher exits
    (whatever is left is replayed by another batcher)."""
