"""The scaler's settings (``LGC_SCALER_*`` plus the shared ``LGC_*`` cluster settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

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

    scaler_fetch_max_wait_ms: int = Field(1_000, ge=0, le=60_000)
    """Longest a fetch of snapshots waits. Snapshots come every few seconds and decisions every
    `scaler_interval_s`, so latency does not matter here; a long wait keeps an idle scaler idle
    (on Tansu every fetch costs the broker CPU, about once a second at this default)."""

    scaler_actuator: Literal["dry-run", "local", "docker", "kubernetes"] = "dry-run"
    """Who acts on decisions: `dry-run` (publish only), `local` (the embedded launcher starts and
    stops worker processes; `lgc up` runs its reconciler when this is `local`), `docker` (Docker
    Engine API: the compose worker service) or `kubernetes` (the worker Deployment's scale)."""

    batcher_group_id: str = Field("lgc-batcher", pattern=r"^[A-Za-z0-9._-]+$", max_length=255)
    """Consumer group of the batchers (the same `LGC_BATCHER_GROUP_ID` they read), whose lag on
    the request topics is a signal."""

    scaler_lag_target_per_replica: float = Field(32.0, gt=0, le=1_000_000)
    """Unfinished requests (consumer lag) one worker should carry: desired = ceil(lag / this), as
    KEDA's Kafka scaler. About a worker's batch size."""

    scaler_trend_window_s: float = Field(120.0, ge=0, le=86_400)
    """Window of the least-squares trend of the load."""

    scaler_prediction_horizon_s: float = Field(60.0, ge=0, le=86_400)
    """How far ahead a rising trend is extrapolated (0: no prediction). About a worker's start time."""

    scaler_scale_up_window_s: float = Field(0.0, ge=0, le=86_400)
    """Scale-up stabilization window: the lowest recommendation of this window is used (HPA: 0)."""

    scaler_scale_down_window_s: float = Field(300.0, ge=0, le=86_400)
    """Scale-down stabilization window: the highest recommendation of this window is used (HPA: 300)."""

    scaler_scale_up_max_step: int = Field(4, ge=1, le=10_000)
    """Most replicas added by one decision."""

    scaler_scale_down_max_step: int = Field(1, ge=1, le=10_000)
    """Most replicas removed by one decision."""

    scaler_scale_to_zero: bool = False
    """Allow 0 workers when idle (requests then wait in Kafka until one starts)."""

    scaler_activation_threshold: float = Field(1.0, ge=0, le=1_000_000)
    """At 0 workers, sequences plus lag needed before the first worker is started."""

    scaler_error_rate_threshold: float = Field(0.2, ge=0, le=1)
    """Above this share of failed requests the scaler does not scale down."""

    scaler_redis_key_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]+$", max_length=128)
    """`local` actuator: prefix of its Redis key and channel; default the topic prefix, as the
    launcher's reconciler expects."""

    scaler_docker_socket: Path = Path("/var/run/docker.sock")
    """`docker` actuator: the Docker Engine's unix socket (mount it into the scaler's container)."""

    scaler_docker_project: str = Field("lgc", pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=128)
    """`docker` actuator: the compose project (label `com.docker.compose.project`)."""

    scaler_docker_service: str = Field("worker", pattern=r"^[A-Za-z0-9._-]+$", max_length=128)
    """`docker` actuator: the compose service of the workers (label `com.docker.compose.service`)."""

    scaler_docker_stop_timeout_s: int = Field(60, ge=0, le=3_600)
    """`docker` actuator: seconds a stopped worker may drain after SIGTERM before it is killed."""

    scaler_k8s_api_url: str = Field("https://kubernetes.default.svc", pattern=r"^https?://")
    """`kubernetes` actuator: the API server (in-cluster default)."""

    scaler_k8s_namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    """`kubernetes` actuator: namespace of the worker Deployment; default the scaler pod's own."""

    scaler_k8s_deployment: str = Field("lgc-worker", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """`kubernetes` actuator: name of the worker Deployment."""

    scaler_k8s_service_account_dir: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount")
    """`kubernetes` actuator: where the service-account `token`, `ca.crt` and `namespace` are mounted."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.scaler_min_replicas > self.scaler_max_replicas:
            raise ValueError("scaler_min_replicas must not exceed scaler_max_replicas")
        return self

    @property
    def redis_key_prefix(self) -> str:
        """Prefix of the `local` actuator's Redis key and channel."""
        return self.scaler_redis_key_prefix or self.topic_prefix

    @property
    def consumer_group(self) -> str:
        """The consumer group actually used."""
        return self.scaler_consumer_group or f"{self.topic_prefix}-scaler"
