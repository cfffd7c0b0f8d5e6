"""The gateway service: wires Kafka, Redis, the reply router, the HTTP and gRPC servers and the
metrics publisher together, in one event loop.

Start it with ``await GatewayService(settings).start()`` (tests do) or run it until an event is set
with :func:`serve` (``python -m services.gateway`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import redis.asyncio as aioredis
import uvicorn
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from shared.blas_threads import cap_blas_threads
from shared.blocking_tenants import BlockingTenants
from shared.doorbell import DoorbellRinger
from shared.kafka_clients import make_producer
from shared.metrics import SnapshotPublisher
from shared.quiet_uvicorn import QuietUvicornServer
from shared.records import GenerationResult
from shared.startup_heap import freeze_startup_heap
from shared.topics import Topics, ensure_topics
from shared.worker_registry import WorkerRegistry

from services.gateway.admission import InflightLimiter
from services.gateway.backpressure import RequestLagMonitor
from services.gateway.cache_purge import CachePurger
from services.gateway.exact_cache import ExactCache
from services.gateway.grpc_api import GatewayGrpcServer
from services.gateway.guardian_client import GuardianClient
from services.gateway.http_api import build_http_app
from services.gateway.kafka_engine_client import KafkaEngineClient
from services.gateway.metrics import GatewayMetrics
from services.gateway.model_catalog import ModelCatalog
from services.gateway.rate_limits import RateLimiter
from services.gateway.reply_router import ReplyRouter
from services.gateway.request_pipeline import RequestPipeline
from services.gateway.response_cache import ResponseCache
from services.gateway.semantic_cache import SemanticCache
from services.gateway.sentence_embedder import SentenceEmbedder
from services.gateway.settings import GatewaySettings
from services.gateway.tenants import TenantDirectory, load_keys_file

__all__ = ["GatewayService", "serve"]

log = logging.getLogger(__name__)


class GatewayService:
    """One gateway instance."""

    def __init__(self, settings: GatewaySettings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.topics = Topics.from_settings(settings)
        self.reply_topic = self.topics.replies(settings.instance_id)
        self.metrics = GatewayMetrics(
            self.registry, instance=settings.instance_id, max_inflight=settings.gateway_max_inflight
        )
        self.http_port: int | None = None
        """The bound HTTP port (set by start)."""
        self.grpc_port: int | None = None
        """The bound gRPC port (set by start)."""
        self._producer: AIOKafkaProducer | None = None
        self._redis: aioredis.Redis | None = None
        self._ringer: DoorbellRinger | None = None
        self._router: ReplyRouter | None = None
        self._engine: KafkaEngineClient | None = None
        self._http_server: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: GatewayGrpcServer | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._announce_task: asyncio.Task[None] | None = None
        self._serving = False
        self._lag_monitor: RequestLagMonitor | None = None
        self._semantic: SemanticCache | None = None
        self._purger: CachePurger | None = None
        self._pipeline: RequestPipeline | None = None
        self._guardian: GuardianClient | None = None

    @property
    def pipeline(self) -> RequestPipeline:
        assert self._pipeline is not None, "start() first"
        return self._pipeline

    @property
    def purger(self) -> CachePurger | None:
        """The verdict consumer that purges flagged answers (None with caches off)."""
        return self._purger

    @property
    def engine(self) -> KafkaEngineClient:
        assert self._engine is not None, "start() first"
        return self._engine

    @property
    def router(self) -> ReplyRouter:
        assert self._router is not None, "start() first"
        return self._router

    def ready(self) -> bool:
        """Ready when the producer and the reply consumer run and both APIs listen."""
        return self._serving and self._router is not None and self._router.ready()

    async def start(self) -> None:
        """Create topics, connect, and start serving. On failure everything started is stopped."""
        try:
            await self._start()
        except BaseException:
            # Half-started: release whatever did start, then let the caller see why.
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        # A bad keys file must stop the start, before anything is connected.
        file_keys = load_keys_file(settings.api_keys_file) if settings.api_keys_file is not None else {}
        # Creating the cluster topics is harmless when `lgc up` made them already, and lets a
        # gateway run against a fresh broker; the reply topic is this instance's own.
        await ensure_topics(
            settings,
            [*self.topics.cluster_topics(settings), self.topics.reply_topic_spec(settings.instance_id, settings)],
        )
        self._producer = make_producer(settings, client_id=f"gateway-{settings.instance_id}")
        await self._producer.start()
        self._redis = aioredis.from_url(settings.redis_url)
        self._router = ReplyRouter(
            settings,
            self._producer,
            topic=self.reply_topic,
            deadletter_topic=self.topics.deadletter,
            on_outcome=lambda outcome: self.metrics.reply_events.labels(result=outcome).inc(),
            redis=self._redis,
        )
        await self._router.start()
        self._ringer = DoorbellRinger.from_settings(self._redis, settings)
        catalog = ModelCatalog(
            WorkerRegistry(self._redis, prefix=settings.topic_prefix),
            refresh_s=settings.gateway_models_refresh_s,
            require_workers=settings.gateway_require_workers,
        )
        self._engine = KafkaEngineClient(
            self._producer,
            self._router,
            catalog,
            self.topics,
            default_timeout_s=settings.gateway_request_timeout_s,
            on_cancel=lambda reason: self.metrics.cancellations.labels(reason=reason).inc(),
            ringer=self._ringer,
        )
        limiter = InflightLimiter(settings.gateway_max_inflight, on_change=self.metrics.set_inflight)
        tenants = TenantDirectory(
            file_keys,
            redis=self._redis if settings.gateway_api_keys_from_redis else None,
            prefix=settings.topic_prefix,
            open_tenant=RequestPipeline.open_tenant_of(settings),
        )
        await tenants.start()
        blocking = tenants.blocking_tenants()
        if blocking:
            # The batchers hold and judge these tenants' answers however their requests arrive
            # (shared/blocking_tenants.py); the first announcement is made before serving.
            announcer = BlockingTenants(self._redis, prefix=settings.topic_prefix)
            await announcer.announce(blocking)
            self._announce_task = asyncio.create_task(
                announcer.announce_forever(blocking), name="gateway-blocking-tenants"
            )
        self._lag_monitor = RequestLagMonitor(
            settings, self.topics.all_requests, on_measure=self.metrics.request_lag.set
        )
        await self._lag_monitor.start()
        cache = await self._start_caches()
        producer = self._producer
        results_topic = self.topics.results

        async def publish_result(result: GenerationResult) -> None:
            await producer.send_and_wait(results_topic, result.to_bytes(), key=result.request_id)

        self._guardian = GuardianClient(settings.gateway_guardian_url, timeout_s=settings.gateway_guard_timeout_s)
        pipeline = RequestPipeline(
            self._engine,
            limiter,
            self.metrics,
            settings,
            tenants=tenants,
            rate_limiter=RateLimiter(
                self._redis, prefix=settings.topic_prefix, concurrency_ttl_s=settings.gateway_concurrency_ttl_s
            ),
            lag_monitor=self._lag_monitor if self._lag_monitor.enabled else None,
            cache=cache,
            publish_result=publish_result,
            guardian=self._guardian,
        )
        self._pipeline = pipeline

        await self._start_http(pipeline)
        self._grpc = GatewayGrpcServer(
            pipeline,
            host=settings.gateway_host,
            port=settings.gateway_grpc_port,
            shutdown_grace_s=settings.gateway_shutdown_grace_s,
        )
        self.grpc_port = await self._grpc.start()

        publisher = SnapshotPublisher(
            self._producer, self.topics.metrics, self.metrics.snapshot, settings.metrics_interval_s
        )
        self._snapshot_task = asyncio.create_task(publisher.run(), name="gateway-metrics-snapshots")
        self._serving = True
        log.info(
            "gateway started",
            extra={
                "http": f"http://{settings.gateway_host}:{self.http_port}",
                "grpc": f"{settings.gateway_host}:{self.grpc_port}",
                "reply_topic": self.reply_topic,
                "max_inflight": settings.gateway_max_inflight,
            },
        )

    async def _start_caches(self) -> ResponseCache | None:
        settings = self.settings
        if not settings.gateway_cache_enabled:
            return None
        assert self._redis is not None
        exact = ExactCache(self._redis, prefix=settings.topic_prefix, ttl_s=settings.gateway_cache_ttl_s)
        if settings.gateway_semantic_cache_enabled:
            path = settings.gateway_qdrant_path or settings.state_dir / "qdrant" / settings.instance_id
            semantic = SemanticCache(
                SemanticCache.open_client(url=settings.qdrant_url, path=path),
                SentenceEmbedder(threads=settings.gateway_embedder_threads),
                collection=f"{settings.topic_prefix}_{settings.gateway_qdrant_collection}",
                threshold=settings.gateway_semantic_threshold,
                ttl_s=settings.gateway_cache_ttl_s,
                redis_index=self._redis,
                prefix=settings.topic_prefix,
            )
            self._semantic = semantic
            await semantic.start()
            # Qdrant's local mode searches with numpy (loaded by now), one query at a time.
            cap_blas_threads(settings.gateway_blas_threads)
        self._purger = CachePurger(
            settings,
            topic=self.topics.verdicts,
            redis=self._redis,
            semantic=self._semantic,
            on_purge=self.metrics.cache_purged.inc,
        )
        await self._purger.start()
        return ResponseCache(exact, self._semantic, deterministic_only=settings.gateway_cache_deterministic_only)

    async def _start_http(self, pipeline: RequestPipeline) -> None:
        settings = self.settings
        app = build_http_app(pipeline, registry=self.registry, ready=self.ready)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http=settings.gateway_http_parser,
            timeout_graceful_shutdown=settings.gateway_shutdown_grace_s,
        )
        server = QuietUvicornServer(config)  # no 10-a-second timer while idle
        # The service's entry point owns SIGTERM/SIGINT; uvicorn must not take them over.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        # Binding here makes a busy port fail start() at once and gives the real port for port 0.
        family = socket.AF_INET6 if ":" in settings.gateway_host else socket.AF_INET
        # proto must be IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted connections
        # only then, and without it every keep-alive response waits ~40 ms (Nagle + delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.gateway_host, settings.gateway_http_port))
        except OSError:
            # Port busy or address invalid: close the socket, start() fails with the reason.
            sock.close()
            raise
        sock.set_inheritable(True)
        self.http_port = int(sock.getsockname()[1])
        self._http_server = server
        self._http_task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
        # Start-up only: uvicorn has no start event to await; this wait is a few milliseconds.
        while not server.started:
            if self._http_task.done():
                self._http_task.result()  # re-raises why it could not start
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop taking requests, let in-flight ones finish (within the grace period), disconnect."""
        self._serving = False
        # Both APIs drain at once, so shutdown takes one grace period, not two.
        await asyncio.gather(self._stop_http(), self._stop_grpc())
        for task in (self._snapshot_task, self._announce_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._snapshot_task = self._announce_task = None
        if self._pipeline is not None:
            await self._pipeline.drain()
        if self._purger is not None:
            await self._purger.stop()
            self._purger = None
        if self._lag_monitor is not None:
            await self._lag_monitor.stop()
            self._lag_monitor = None
        if self._semantic is not None:
            await self._semantic.close()
            self._semantic = None
        if self._engine is not None:
            await self._engine.drain()
        if self._router is not None:
            await self._router.stop()
            self._router = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._ringer is not None:
            await self._ringer.aclose()  # the last requests' rings, before Redis closes
            self._ringer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._guardian is not None:
            await self._guardian.aclose()
            self._guardian = None
        log.info("gateway stopped")

    async def _stop_http(self) -> None:
        if self._http_server is not None and self._http_task is not None:
            self._http_server.should_exit = True
            try:
                await self._http_task
            except Exception:
                # Safe: shutting down anyway; the failure is logged.
                log.exception("the HTTP server failed while stopping")
        self._http_server = self._http_task = None

    async def _stop_grpc(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
        self._grpc = None


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Run a gateway until `stop` is set, then shut it down gracefully."""
    service = GatewayService(settings)
    await service.start()
    freeze_startup_heap()
    try:
        await stop.wait()
    finally:
        await service.stop()
