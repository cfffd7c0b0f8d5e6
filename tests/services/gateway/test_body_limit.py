"""The body size limit, driven at the ASGI level in front of a small FastAPI app."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from services.gateway.body_limit import BodySizeLimit


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"status": exc.status_code}, status_code=exc.status_code)

    app.add_middleware(BodySizeLimit, max_bytes=100)
    return app


async def call(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, dict]:
    app = echo_app()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("test", 80),
        "client": ("test", 1),
        "scheme": "http",
    }
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def test_small_bodies_pass() -> None:
    status, body = await call([b"x" * 60, b"y" * 40], [(b"content-length", b"100")])
    assert (status, body) == (200, {"received": 100})


async def test_declared_length_over_the_limit_is_refused_unread() -> None:
    status, body = await call([b"x" * 101], [(b"content-length", b"101")])
    assert status == 413 and body["error"]["code"] == "request_too_large"


async def test_chunked_body_over_the_limit_is_refused() -> None:
    status, body = await call([b"x" * 60, b"y" * 60], [(b"transfer-encoding", b"chunked")])
    assert (status, body) == (413, {"status": 413})  # through the app's HTTPException handler


async def test_malformed_content_length_is_400() -> None:
    status, body = await call([b"x"], [(b"content-length", b"ten")])
    assert status == 400 and body["error"]["param"] == "Content-Length"
