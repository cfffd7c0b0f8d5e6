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

    batcher_max_wait_ms: int = Field(2, ge=0, le=10_000)
    """Longest a micro-batch that is not full waits for more requests of its group before it is
    dispatched (0: dispatch what each fetch brings at once). A full batch goes at once."""

    batcher_token_budget: int = Field(65_536, ge=1)
    """Most `max_new_tokens` summed over one micro-batch."""

    batcher_max_inflight: int = Field(512, ge=1, le=100_000)
    """Most requests taken from Kafka and not yet finished; beyond it partitions are paused."""

    batcher_credits_per_slot: float = Field(2.0, gt=0, le=64)
    """Requests in flight per worker batch slot (2 = one running plus one waiting batch)."""

    batcher_max_attempts: int = Field(3, ge=1, le=10)
    """Tries per request (on different workers when possible) before it fails with worker_failed."""

    batcher_lb_policy: Literal["round_robin", "least_outstanding", "weighted", "prefix_affinity"] = "least_outstanding"
    """How a worker is chosen for a batch: `round_robin`, `least_outstanding` (outstanding tokens
    per batch slot), `weighted` (smooth weighted round robin by registered capacity) or
    `prefix_affinity` (same prompt prefix → same worker; least_outstanding when it is saturated)."""

    batcher_affinity_prefix_chars: int = Field(256, ge=1, le=100_000)
    """How many leading characters of the prompt `prefix_affinity` hashes."""

    batcher_affinity_saturation: float = Field(1.0, gt=0, le=64)
    """`prefix_affinity` leaves a prefix's worker once its outstanding requests reach
    `capacity × this` (1.0: every batch slot busy)."""

    batcher_normal_credit_share: float = Field(0.4, gt=0, le=1)
    """While high-priority traffic is active, the most of the credits normal and low requests
    together may hold; the rest is headroom for high priority. The default (0.4 of 2 credits per
    slot = 0.8 of the worker slots) keeps some slots free, so a high request starts at once."""

    batcher_low_credit_share: float = Field(0.3, gt=0, le=1)
    """While high-priority traffic is active, the most of the credits low requests may hold."""

    batcher_high_active_s: float = Field(10.0, ge=0, le=86_400)
    """The credit shares apply for this long after the last high-priority request was taken
    (0: never; without high traffic every level may use every credit)."""

    batcher_aging_s: float = Field(5.0, gt=0, le=3_600)
    """A priority level kept waiting this long by higher-priority backlog gets the next credits
    ahead of them (one micro-batch), so low priority is never starved."""

    batcher_registry_refresh_s: float = Field(5.0, gt=0, le=300)
    """Longest between two reads of the worker registry (changes are also pushed)."""

    batcher_rpc_timeout_s: float = Field(600.0, gt=0)
    """Longest one Generate call to a worker may take when its requests carry no deadline."""

    batcher_stream_stall_s: float = Field(10.0, gt=0, le=3_600)
    """A worker stream silent this long (no event for any of its requests) makes the batcher ask
    the worker whether it still answers (`Info` RPC); one that does not is taken as hung, and the
    stream's requests go to another worker. A worker that answers is busy, and is waited for."""

    batcher_stall_probe_timeout_s: float = Field(5.0, gt=0, le=600)
    """How long the worker may take to answer that question before it is taken as hung."""

    batcher_no_worker_wait_s: float = Field(30.0, ge=0, le=3_600)
    """How long a batch waits for a worker serving its model to appear before it fails
    (`no_workers` / `model_not_found`); a request's deadline shortens it."""

    batcher_shutdown_grace_s: float = Field(30.0, ge=0, le=3_600)
    """On SIGTERM, how long in-flight requests may run to completion before the batcher exits
    (whatever is left is replayed by another batcher)."""

    # ---- blocking guard mode (services/batcher/answer_guard.py) --------------------------------

    batcher_guardian_url: str = Field("http://127.0.0.1:8090", pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2_048)
    """The guardian's HTTP base URL: the answers of blocking-mode requests and tenants are judged
    with its `POST /v1/guard/check` before they leave the batcher (`lgc up` sets it)."""

    batcher_guard_timeout_s: float = Field(2.0, gt=0, le=60)
    """Longest wait for the guardian's verdict on a held answer; without a verdict the request ends
    with `guardian_unavailable` (fail closed: the answer is not sent)."""

    batcher_blocking_tenants_refresh_s: float = Field(5.0, gt=0, le=300)
    """How often the list of blocking-mode tenants is re-read from Redis (shared/blocking_tenants.py):
    a tenant put in blocking mode is enforced by every batcher within this time."""
