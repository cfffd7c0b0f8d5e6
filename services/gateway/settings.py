"""The gateway's settings: the one place every ``LGC_GATEWAY_*`` variable is defined."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.records import GuardMode, Priority
from shared.settings import ClusterSettings

from services.gateway.openai_protocol import MAX_CHOICES

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

    gateway_max_choices: int = Field(16, ge=1, le=MAX_CHOICES)
    """Most choices one request may make: its `n`, times its prompts for a completion request with a
    list of them; more gets 400. OpenAI allows `n` up to 128; the default is lower because each
    choice is a whole request in the cluster (queued, batched and generated on its own), so one
    client request of n choices costs as much as n."""

    gateway_default_priority: Priority = Priority.NORMAL
    """Priority of requests that name none (body `priority`, header `X-LGC-Priority`, gRPC field)."""

    gateway_models_refresh_s: float = Field(2.0, gt=0, le=3_600)
    """How long the list of served models (read from the worker registry in Redis) is reused
    before it is read again."""

    gateway_require_workers: bool = True
    """Refuse requests with 503 while no worker is registered. False: accept them anyway and let
    them wait in Kafka (for clusters whose scaler starts workers on demand)."""

    gateway_http_parser: Literal["httptools", "h11"] = "httptools"
    """HTTP/1.1 implementation of the gateway's uvicorn server: `httptools` (C parser, the one
    `uvicorn[standard]` uses; about a millisecond less per request on this machine) or `h11` (pure
    Python, for platforms without a httptools wheel)."""

    gateway_shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    """On shutdown, how long in-flight requests may take to finish before they are cut off."""

    # ---- tenants and API keys ---------------------------------------------------------------

    api_keys_file: Path | None = None
    """`LGC_API_KEYS_FILE`: YAML or JSON file mapping API key -> tenant (`name`, `default_priority`,
    `max_priority`, `requests_per_min`, `tokens_per_min`, `max_concurrent`). Unset and no keys in
    Redis: the gateway runs open (every request is tenant `default`) and says so at start."""

    gateway_api_keys_from_redis: bool = True
    """Also look API keys up in Redis (hash `<prefix>:apikeys`, field = SHA-256 of the key, value =
    the tenant as JSON), so keys can be added without a restart. Keys are required when this hash
    holds any key at start, or when a keys file is given."""

    gateway_open_tenant_requests_per_min: int = Field(0, ge=0, le=100_000_000)
    """Requests per minute of tenant `default` in open mode (0: unlimited)."""

    gateway_open_tenant_tokens_per_min: int = Field(0, ge=0, le=1_000_000_000)
    """Tokens (max_tokens counted up front, reconciled with usage) per minute of tenant `default`
    in open mode (0: unlimited)."""

    gateway_open_tenant_max_concurrent: int = Field(0, ge=0, le=1_000_000)
    """Concurrent requests of tenant `default` in open mode (0: unlimited)."""

    gateway_open_tenant_guard_mode: GuardMode = GuardMode.ASYNC
    """Guardian mode of tenant `default` in open mode: `async` (judged after delivery), `blocking`
    (non-streaming answers wait for the verdict), `off` (not judged)."""

    gateway_concurrency_ttl_s: int = Field(900, ge=10, le=86_400)
    """Safety TTL of a tenant's concurrent-request counter in Redis: if a gateway dies with requests
    in flight, their slots come back after this long without activity."""

    # ---- backpressure -----------------------------------------------------------------------

    gateway_max_request_lag: int = Field(0, ge=0, le=1_000_000_000)
    """Most records waiting in the request topics (end offsets minus the batcher group's committed
    offsets, all priorities) before new requests get 429 + Retry-After; 0 turns the check off."""

    gateway_lag_check_interval_s: float = Field(1.0, gt=0, le=60)
    """How long a measured request-topic lag is reused before it is measured again."""

    gateway_batcher_group_id: str = Field("lgc-batcher", pattern=r"^[A-Za-z0-9._-]+$", max_length=255)
    """Consumer group of the batchers, whose committed offsets the lag check reads."""

    # ---- caches -----------------------------------------------------------------------------

    gateway_cache_enabled: bool = True
    """Answer repeated requests from the exact cache (Redis) and store answers in it."""

    gateway_cache_deterministic_only: bool = True
    """Cache only deterministic requests (temperature 0, or a fixed seed). False: cache every
    request (sampling answers are then replayed, not re-sampled)."""

    gateway_cache_ttl_s: int = Field(3_600, ge=1, le=30 * 86_400)
    """How long a cached answer lives (exact and semantic)."""

    gateway_semantic_cache_enabled: bool = True
    """Also answer close paraphrases from the semantic cache (Qdrant + all-MiniLM-L6-v2), behind
    the false-hit guard (negations, numbers, units, named entities must match)."""

    gateway_semantic_threshold: float = Field(0.82, ge=0.5, le=1.0)
    """Least cosine similarity for a semantic hit (the false-hit guard also has to agree). 0.82 was
    chosen on load-tests/data: 88% of paraphrases hit, no near miss passes the guard."""

    gateway_embedder_threads: int = Field(1, ge=0, le=256)
    """Torch intra-op threads for the embedder, set process-wide when it loads (0: torch's
    default). One sentence at a time gains nothing from more, and they contend on busy CPUs."""

    gateway_blas_threads: int = Field(1, ge=1, le=256)
    """Threads numpy's BLAS (OpenBLAS) may use in the gateway process, applied when the semantic
    cache starts: qdrant-client's local mode searches with numpy, one query at a time. With
    OpenBLAS's default (one per core) the extra threads only spin: a search over 2,000 vectors used
    7.3 instead of 1.1 ms of CPU, in the same wall time (2026-12-06, 2 cores)."""

    gateway_qdrant_path: Path | None = None
    """Qdrant local-mode directory when `LGC_QDRANT_URL` is unset. Unset:
    `<state_dir>/qdrant/<instance_id>` (a local-mode path is locked by one process)."""

    gateway_qdrant_collection: str = Field("lgc_semantic_cache", pattern=r"^[A-Za-z0-9_-]+$", max_length=128)
    """Qdrant collection of the semantic cache (the topic prefix is prepended)."""

    # ---- guardian (blocking mode) -----------------------------------------------------------

    gateway_guardian_url: str = Field("http://127.0.0.1:8090", pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=2_048)
    """Base URL of the guardian's HTTP API; answers of tenants in blocking mode are checked with
    `POST <url>/v1/guard/check` before they are sent."""

    gateway_guard_timeout_s: float = Field(2.0, gt=0, le=60)
    """Longest the gateway waits for the guardian's verdict on a blocking-mode tenant's answer."""

    gateway_guard_fail_open: bool = False
    """When the guardian cannot judge a blocking-mode answer in time: False (fail closed) answers
    503 `guardian_unavailable` with Retry-After; True delivers the answer unjudged (logged,
    counted as `failed_open`; its verdict still follows asynchronously)."""
