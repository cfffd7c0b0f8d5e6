"""The scaler's settings (``LGC_SCALER_*`` plus the shared ``LGC_*`` cluster settings)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from shared.settings import ClusterSettings

__all__ = ["ScalerSettings"]


class ScalerSettings(ClusterSettings):
    """Where the scaler listens and how it decides."""

    scaler_host: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9._:-]+$", max_length=253)
    """Interface of the ops server (`0.0.0.0` in containers)."""

    scaler_metrics_port: int = Field(9102, ge=1, le=65535)
    """Port of /metrics, /health and /ready."""

    scaler_min_replicas: int = Field(1, ge=0, le=10_000)
    """Fewest workers the scaler ever asks for."""

    scaler_max_replicas: int = Field(8, ge=1, le=10_000)
    """Most workers the scaler ever asks for."""

    scaler_target_utilization: float = Field(0.8, gt=0.0, le=1.0)
    """Fraction of the workers' capacity (concurrent sequences) the policy aims to keep busy."""

    scaler_default_worker_capacity: int = Field(8, ge=1, le=100_000)
    """Capacity assumed for workers whose snapshots do not report `capacity`."""

    scaler_interval_s: float = Field(15.0, gt=0, le=3_600)
    """How often a decision is computed."""

    scaler_snapshot_ttl_s: float = Field(30.0, gt=0, le=3_600)
    """A worker whose latest snapshot is older than this is taken to be gone."""

    scaler_heartbeat_s: float = Field(300.0, gt=0, le=86_400)
    """An unchanged decision is published again after this long, so readers see the scaler is alive."""

    scaler_consumer_group: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$", max_length=255)
    """Consumer group on the metrics topic; default `<topic_prefix>-scaler` (`lgc-scaler`)."""

    scaler_fetch_max_wait_ms: int = Field(500, ge=0, le=60_000)
    """Longest a fetch of snapshots waits. Snapshots come every few seconds and decisions every
    `scaler_interval_s`, so latency does not matter here; a long wait keeps an idle scaler idle."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.scaler_min_replicas > self.scaler_max_replicas:
            raise ValueError("scaler_min_replicas must not exceed scaler_max_replicas")
        return self

    @property
    def consumer_group(self) -> str:
        """The consumer group actually used."""
        return self.scaler_consumer_group or f"{self.topic_prefix}-scaler"
