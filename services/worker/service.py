"""The worker process: gRPC server + engine + registration + metrics, with a graceful drain.

Start-up order: the ops server (/metrics, /health, /ready) and the gRPC server come up first, so
operators and health checks see a loading worker (gRPC health NOT_SERVING, /ready 503, Generate
answers OVERLOADED); then the model loads off the event loop; only then does health turn SERVING
and the worker register itself in Redis.

Shutdown (:meth:`WorkerService.drain` then :meth:`WorkerService.stop`): mark draining (registry
entry and health NOT_SERVING at once; new Generate items fail with OVERLOADED so the batcher retries
them elsewhere), let in-flight sequences finish for up to `worker_drain_timeout_s`, fail what is
left with OVERLOADED, then deregister and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.worker.engine import Engine, EngineFailedError, FailureCode
from services.worker.engine_factory import build_engine
from services.worker.error_boundary import ErrorBoundaryInterceptor
from services.worker.grpc_servicer import WorkerServicer
from services.worker.metrics import WorkerMetrics
from services.worker.registration import Registration
from services.worker.settings import WorkerSettings
from services.worker.snapshot_publishing import publish_snapshots
from shared.background_tasks import cancel_and_wait
from shared.ops_server import OpsServer
from shared.protos import worker_pb2, worker_pb2_grpc
from shared.startup_heap import freeze_startup_heap
from shared.worker_registry import WorkerInfo

__all__ = ["WORKER_SERVICE_NAME", "WorkerService", "serve"]

log = logging.getLogger(__name__)

#: Full name of the Worker gRPC service (for health checks and reflection).
WORKER_SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
#: After the drain, how long calls still open may take to end once their items were failed.
_ABORT_GRACE_S = 10.0


class WorkerService:
    """One worker: construct, `await start()`, later `await drain()` and `await stop()`."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        registry: CollectorRegistry | None = None,
        engine: Engine | None = None,
        after_ops_start: Callable[[], None] | None = None,
    ) -> None:
        """`after_ops_start` runs once the ops server is up: uvicorn takes over SIGTERM/SIGINT
        there (and re-raises them when it stops), so `serve` re-installs its handlers then."""
        self.settings = settings
        self._after_ops_start = after_ops_start
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry, settings.instance_id)
        self.engine = engine if engine is not None else build_engine(settings, self.metrics)
        self.ready = False
        self.draining = False
        self.health = health.aio.HealthServicer()
        self.servicer = WorkerServicer(
            settings, self.engine, self.metrics, ready=lambda: self.ready, draining=lambda: self.draining
        )
        self._server: grpc.aio.Server | None = None
        self._ops: OpsServer | None = None
        self._registration: Registration | None = None
        self._snapshots: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()
        self.failed = asyncio.Event()
        """Set when the engine failed for good (`EngineFailedError`); `serve` then stops the worker."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.engine.on_failure = self._engine_failed
        self.grpc_port = 0

    # ------------------------------------------------------------------------------ start

    async def start(self) -> None:
        """Serve health at once, load the model, then serve Generate and register."""
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if settings.worker_metrics_port:
            self._ops = OpsServer(
                settings.worker_host,
                settings.worker_metrics_port,
                self.registry,
                ready=lambda: self.ready and not self.draining,
            )
            await self._ops.start()
            if self._after_ops_start is not None:
                self._after_ops_start()
        await self._start_grpc()
        log.info(
            "worker listening; loading the model",
            extra={
                "grpc": f"{settings.worker_host}:{self.grpc_port}",
                "metrics_port": settings.worker_metrics_port,
                "backend": settings.worker_backend,
                "model": settings.model,
            },
        )
        await self.engine.start()
        info = self.engine.info
        self.metrics.bind(info, lambda: (self.engine.running, self.engine.waiting), lambda: self.draining)
        self.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._registration = Registration(
            settings.redis_url, settings.topic_prefix, settings.worker_registry_ttl_s, self.worker_info
        )
        self._registration.start()
        self._snapshots = asyncio.create_task(
            publish_snapshots(settings, lambda: self.metrics.snapshot(self.address)), name="worker-snapshots"
        )
        log.info(
            "worker ready",
            extra={
                "model": info.model,
                "backend": info.backend,
                "device": info.device,
                "dtype": info.dtype,
                "simulated": info.simulated,
                "address": self.address,
                "max_batch_size": info.max_batch_size,
            },
        )

    async def _start_grpc(self) -> None:
        # No SO_REUSEPORT: a second worker on the same port must fail instead of sharing it.
        server = grpc.aio.server(interceptors=[ErrorBoundaryInterceptor()], options=[("grpc.so_reuseport", 0)])
        worker_pb2_grpc.add_WorkerServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (WORKER_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        target = f"{self.settings.worker_host}:{self.settings.worker_grpc_port}"
        try:
            port = server.add_insecure_port(target)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {target}: {exc}") from exc
        if port == 0:
            raise RuntimeError(f"cannot listen for gRPC on {target}")
        await server.start()
        self._server, self.grpc_port = server, port

    async def _set_health(self, status: int) -> None:
        for service in ("", WORKER_SERVICE_NAME):
            await self.health.set(service, status)

    # ------------------------------------------------------------------------------ state

    @property
    def address(self) -> str:
        """The `host:port` batchers dial."""
        host = self.settings.worker_advertise_host or self.settings.worker_host
        return f"{host}:{self.grpc_port or self.settings.worker_grpc_port}"

    def worker_info(self) -> WorkerInfo:
        """This worker's registry entry, as of now."""
        info = self.engine.info
        return WorkerInfo(
            worker_id=self.settings.instance_id,
            address=self.address,
            model=info.model,
            backend=info.backend,
            capacity=info.max_batch_size,
            running=self.engine.running,
            waiting=self.engine.waiting,
            simulated=info.simulated,
            draining=self.draining,
            max_model_len=info.max_model_len,
            batched_events=True,
        )

    # ------------------------------------------------------------------------------ shutdown

    def _engine_failed(self, message: str) -> None:
        """`Engine.on_failure`: from the engine's thread, so hand over to the event loop."""
        if self._loop is None:
            return  # not started: start() itself raises
        try:
            self._loop.call_soon_threadsafe(self.failed.set)
        except RuntimeError:
            # Safe: the loop is closed, so the worker is already stopping.
            log.debug("engine failure after the event loop closed", extra={"failure": message})

    def hurry(self) -> None:
        """Cut the drain short (a second signal): in-flight work fails with OVERLOADED now."""
        self._hurry.set()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Refuse new work, wait for in-flight work (up to the drain timeout), fail the rest."""
        timeout = self.settings.worker_drain_timeout_s if timeout_s is None else timeout_s
        self.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._registration is not None:
            await self._registration.refresh_now()
        log.info(
            "draining",
            extra={"running": self.engine.running, "waiting": self.engine.waiting, "timeout_s": timeout},
        )
        if await self._wait_idle(timeout, stop_on_hurry=True):
            return
        aborted = self.engine.abort_all(FailureCode.OVERLOADED, "the worker stopped before this request finished")
        log.warning("drain timed out; failing in-flight sequences with OVERLOADED", extra={"sequences": aborted})
        await self._wait_idle(_ABORT_GRACE_S, stop_on_hurry=False)

    async def _wait_idle(self, timeout_s: float, *, stop_on_hurry: bool) -> bool:
        """True once no Generate call is open; False on timeout (or a hurry request)."""
        idle = asyncio.create_task(self.servicer.wait_idle())
        waits = {idle}
        if stop_on_hurry:
            waits.add(asyncio.create_task(self._hurry.wait()))
        done, pending = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return idle in done

    async def stop(self) -> None:
        """Deregister and release everything (call `drain` first for a graceful stop)."""
        self.ready = False
        if self._registration is not None:
            await self._registration.stop()
        if self._server is not None:
            await self._server.stop(grace=1.0)
        await self.engine.stop()
        if self._snapshots is not None:
            self._snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshots
        if self._ops is not None:
            await self._ops.stop()
        log.info("worker stopped")


async def serve(settings: WorkerSettings) -> None:
    """Run a worker until SIGTERM or SIGINT, then drain and stop (a second signal hurries the
    drain). Raises if the worker cannot start (no model, port taken, missing backend), and
    `EngineFailedError` after stopping if its engine failed for good."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    starting = asyncio.current_task()

    def on_signal(signum: int) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        if stop_requested.is_set():
            service.hurry()
        stop_requested.set()
        if not service.ready and starting is not None:
            starting.cancel()  # still loading: there is nothing to drain

    def install_handlers() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

    service = WorkerService(settings, after_ops_start=install_handlers)
    install_handlers()
    try:
        try:
            await service.start()
        except asyncio.CancelledError:
            if not stop_requested.is_set():
                raise
            log.info("stopped while starting")
            # The cancellation was ours (a signal during start-up): stop cleanly below.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        else:
            freeze_startup_heap()
            stop = asyncio.create_task(stop_requested.wait())
            failed = asyncio.create_task(service.failed.wait())
            await asyncio.wait({stop, failed}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (stop, failed):
                await cancel_and_wait(waiter)
            # After an engine failure every sequence has failed already: the drain only turns
            # health NOT_SERVING, marks the registry entry and waits for the RPCs to close.
            await service.drain()
    finally:
        await service.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if service.engine.failure is not None:
        raise EngineFailedError(service.engine.failure)
