"""The gateway's settings: the one place every ``LGC_GATEWAY_*`` variable is defined."""

from __future__ import annotations

from pydantic import Field

from shared.records import Priority
from shared.settings import ClusterSettings

__all__ = ["GatewaySettings"]


class GatewaySettings(ClusterSettings):
    """Settings of one gateway instance (``LGC_*``; gateway-only ones ``LGC_GATEWAY_*``)."""

    gateway_host: str = Field("127.0.0.1", min_length=1, max_length=255)
    """Address the HTTP and gRPC servers bind to (`0.0.0.0` to listen on every interface)."""

    gateway_http_port: int = Field(8000, ge=0, le=65_535)
    """Port of the OpenAI-compatible HTTP API (0: any free port, reported at start)."""

    gateway_grpc_port: int = Field(50051, ge=0, le=65_535)
    """Port of the public gRPC API (0: any free port, reported at start)."""

    gateway_request_timeout_s: float = Field(300.0, gt=0, le=86_400)
    """Longest a request may take end to end; it becomes the request's deadline (a gRPC deadline
    that is shorter wins). On expiry the client gets 504 and the batcher a Cancel."""

    gateway_max_inflight: int = Field(1024, ge=1, le=1_000_000)
    """Requests this instance serves at once; beyond it clients get 429 with Retry-After, so
    waiting work stays in Kafka and in clients, never in this process's memory."""

    gateway_retry_after_s: int = Field(1, ge=1, le=3_600)
    """Value of the Retry-After header on 429 and 503 answers."""

    gateway_max_body_bytes: int = Field(1_048_576, ge=1_024, le=104_857_600)
    """Largest HTTP request body; larger ones get 413 before they are read completely."""

    gateway_max_prompt_chars: int = Field(100_000, ge=1, le=200_000)
    """Largest prompt in characters (all message contents together); larger ones get 400
    `context_length_exceeded`. Bounded by what one Kafka record may carry."""

    gateway_max_tokens_limit: int = Field(4096, ge=1, le=32_768)
    """Largest `max_tokens` a client may ask for; more gets 400."""

    gateway_default_max_tokens: int = Field(256, ge=1, le=32_768)
    """`max_tokens` when a client gives none (capped by `gateway_max_tokens_limit`)."""

    gateway_default_priority: Priority = Priority.NORMAL
    """Priority of requests that name none (body `priority`, header `X-LGC-Priority`, gRPC field)."""

    gateway_models_refresh_s: float = Field(2.0, gt=0, le=3_600)
    """How long the list of served models (read from the worker registry in Redis) is reused
    before it is read again."""

    gateway_require_workers: bool = True
    """Refuse requests with 503 while no worker is registered. False: accept them anyway and let
    them wait in Kafka (for clusters whose scaler starts workers on demand)."""

    gateway_shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    """On shutdown, how long in-flight requests may take to finish before they are cut off."""
