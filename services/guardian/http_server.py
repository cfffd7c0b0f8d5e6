"""Serves the guardian's FastAPI app with uvicorn inside the service's own event loop."""

from __future__ import annotations

import asyncio

import uvicorn
from fastapi import FastAPI

from shared.quiet_uvicorn import QuietUvicornServer

__all__ = ["HttpServer"]


class HttpServer:
    """`app` on `host:port` until stopped; bind errors surface from `start()`."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self._server = QuietUvicornServer(config)  # no 10-a-second timer while idle
        # The service installs its own signal handlers; uvicorn must not take them over.
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._server.serve(), name="guardian-http")
        # uvicorn offers no start-up event; start-up takes milliseconds, checked every 10 ms
        # (as shared.ops_server does), and only during start-up.
        while not self._server.started:
            if self.task.done():
                self.task.result()  # re-raises the bind error (uvicorn exits with SystemExit)
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self.task is not None:
            await self.task
