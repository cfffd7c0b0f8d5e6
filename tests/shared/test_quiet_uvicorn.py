"""QuietUvicornServer serves like uvicorn's Server, ticks once a second instead of ten times, and
still stops at once when asked."""

from __future__ import annotations

import asyncio

import httpx
import uvicorn
from fastapi import FastAPI

from shared.launcher.infra import find_free_port
from shared.quiet_uvicorn import QuietUvicornServer


class CountingServer(QuietUvicornServer):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


async def test_serves_ticks_rarely_and_stops_at_once() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    port = find_free_port()
    server = CountingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)  # test-side wait for start-up
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/ping")
    assert response.json() == {"pong": "yes"}
    assert "date" in response.headers  # the once-a-second tick keeps uvicorn's Date header

    ticks_before = server.ticks
    await asyncio.sleep(1.5)
    assert server.ticks - ticks_before <= 3  # uvicorn's own loop would have ticked ~15 times

    # With a tick far longer than the wait below, only should_exit's wake-up can end it in time.
    server.tick_s = 60.0
    await asyncio.sleep(1.1)  # the loop is now inside a 60 s wait
    server.should_exit = True
    await asyncio.wait_for(task, 10)
