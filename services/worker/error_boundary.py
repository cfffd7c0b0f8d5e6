"""The gRPC error boundary of the worker: one server interceptor around the Worker service.

Invalid input (:class:`InvalidArgumentError`, and bytes that do not parse as the method's request
message, which the interceptor parses itself) becomes INVALID_ARGUMENT with its message; any other
unexpected exception becomes INTERNAL with a short message and is logged with the request ids, so
a bug never surfaces as gRPC's bare UNKNOWN. Aborts and cancellations pass through untouched.
Health and reflection are not wrapped (they are grpcio's own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.worker.proto_convert import InvalidArgumentError
from shared.protos import worker_pb2
from shared.structured_logging import request_context

__all__ = ["ErrorBoundaryInterceptor"]

log = logging.getLogger(__name__)

_SERVICE_PREFIX = "/lgc.worker.v1.Worker/"
#: The message each Worker method takes, by method name (for the error message).
_REQUEST_TYPES = {
    name: method.input_type.full_name
    for name, method in worker_pb2.DESCRIPTOR.services_by_name["Worker"].methods_by_name.items()
}


def _request_ids(request: Any) -> str:
    """The request ids a message carries, for the log line."""
    ids: list[str] = []
    if hasattr(request, "items"):
        ids = [item.request_id for item in request.items]
    elif hasattr(request, "request_ids"):
        ids = list(request.request_ids)
    return ",".join(ids[:16]) + (",..." if len(ids) > 16 else "")


async def _translate(exc: Exception, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
    """Abort the call with the status `exc` deserves (always raises)."""
    ids = _request_ids(request)
    with request_context(ids):
        if isinstance(exc, InvalidArgumentError):
            log.info("invalid call", extra={"method": method, "error": str(exc), "request_ids": ids})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.error("unexpected error in a gRPC handler", extra={"method": method, "request_ids": ids}, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}")


class ErrorBoundaryInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping Worker handlers to proper gRPC statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_SERVICE_PREFIX):
            return handler
        # The request is parsed inside the wrapper: grpcio answers bytes that do not parse with
        # UNKNOWN ("Unexpected <class DecodeError>..."); they are the caller's mistake.
        parse = _parser(handler.request_deserializer, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, parse),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, parse),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return handler


def _parser(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[Any], Any]:
    """`deserializer` raising InvalidArgumentError (naming the expected message) on bad bytes."""
    if deserializer is None:
        return lambda request: request
    name = _REQUEST_TYPES.get(method.rsplit("/", 1)[-1], "request")

    def parse(raw: Any) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            # Safe: whatever the protobuf runtime raises here (DecodeError, bad UTF-8 in a string
            # field, ...), the bytes are not the message the method takes.
            raise InvalidArgumentError(f"the request is not a valid {name} message ({type(exc).__name__}: {exc})") from exc

    return parse


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], method: str, parse: Callable[[Any], Any]
) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = parse(request)
            return await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise  # Safe: the client went away, or the handler chose its status already.
        except Exception as exc:
            # Safe: _translate always ends the call with a status; nothing else is pending.
            await _translate(exc, method, request, context)

    return unary


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str, parse: Callable[[Any], Any]
) -> Callable[..., AsyncIterator[Any]]:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            request = parse(request)
        except InvalidArgumentError as exc:
            # Safe: _translate ends the call with INVALID_ARGUMENT; no handler ran yet.
            await _translate(exc, method, b"", context)
        responses = behavior(request, context)
        try:
            async for response in responses:
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise  # Safe: the client went away, or the handler chose its status already.
        except Exception as exc:
            # Safe: the handler's own `finally` cleaned up its items; this only sets the status.
            await _translate(exc, method, request, context)
        finally:
            # Close the handler's generator now (not whenever it is garbage collected), so its
            # cleanup (cancelling its items in the engine) runs when this stream ends.
            await responses.aclose()  # type: ignore[attr-defined]

    return stream
