"""The small HTTP server every service without an HTTP API of its own runs for operators:
``/metrics`` (Prometheus), ``/health`` (the process is alive) and ``/ready`` (it can do its job).

It runs inside the service's event loop (uvicorn's ``Server.serve``), so it costs no thread, and
without uvicorn's 10-a-second timer (shared/quiet_uvicorn.py) it wakes about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.quiet_uvicorn import QuietUvicornServer

__all__ = ["OpsServer", "add_ops_routes"]


def add_ops_routes(app: FastAPI, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
    """Add /metrics, /health and /ready to an app (the gateway and guardian add them to theirs)."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/ready", include_in_schema=False)
    async def readiness() -> JSONResponse:
        ok = ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


class OpsServer:
    """Serves the ops routes on `host:port` until stopped."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        add_ops_routes(app, registry, ready)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self._server = QuietUvicornServer(config)
        # The service installs its own signal handlers; uvicorn (0.54: capture_signals) must not
        # take SIGTERM/SIGINT over while it serves.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="ops-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raises the bind error
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
