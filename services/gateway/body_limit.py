"""An ASGI middleware that refuses request bodies larger than a limit (413) before reading them.

A declared Content-Length over the limit is refused at once; a chunked body is counted as it
arrives and refused as soon as it passes the limit, so no oversized body is ever held in memory.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import InvalidRequestError, RequestTooLargeError, map_exception

__all__ = ["BodySizeLimit", "too_large_message"]


def too_large_message(limit: int) -> str:
    """The explanation clients get with 413."""
    return f"The request body is larger than this gateway's limit of {limit} bytes."


class BodySizeLimit:
    """Refuses HTTP requests whose body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared != -1 and declared > self.max_bytes:
            await _answer(RequestTooLargeError(too_large_message(self.max_bytes)), scope, receive, send)
            return
        if declared == -1:
            error = InvalidRequestError("The Content-Length header is not a valid number.", param="Content-Length")
            await _answer(error, scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI lets HTTPException through its body reading; the app's handler turns
                    # it into the OpenAI error object.
                    raise HTTPException(status_code=413, detail=too_large_message(self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent, -1 when malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                # Safe: a malformed header is refused by the caller with 400.
                return -1
            return length if length >= 0 else -1
    return None


async def _answer(error: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    api = map_exception(error)
    response = Response(api.json_bytes(), status_code=api.status, media_type="application/json", headers=api.response_headers())
    await response(scope, receive, send)
