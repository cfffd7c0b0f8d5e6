"""The public gRPC API (shared/protos/gateway.proto): `Generate` (unary) and `GenerateStream`
(server streaming), plus the standard health service and server reflection.

Protobuf messages are turned into internal types at the edge (request_translation.translate_proto).
The call's deadline becomes the request's deadline; a client that cancels has its request cancelled
in the cluster. One interceptor is the error boundary: whatever a Gateway method raises becomes a
gRPC status through errors.map_exception (bad input -> INVALID_ARGUMENT, never INTERNAL). It also
parses the request message itself, so bytes that are not a GenerateRequest get INVALID_ARGUMENT
too (grpcio's own parse failure would be UNKNOWN).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.protos import gateway_pb2, gateway_pb2_grpc
from shared.records import ReplyKind, TokenLogprob, Usage
from shared.structured_logging import request_context

from services.gateway.errors import InvalidRequestError, ReplyError, grpc_status_for, map_exception, outcome_of
from services.gateway.parallel_sampling import ChoiceEvent
from services.gateway.request_pipeline import ChoicesCall, GenerationCall, RequestPipeline
from services.gateway.request_translation import new_request_id, translate_proto
from services.gateway.response_format import finish_reason_name, unsent_text

__all__ = ["CACHE_METADATA", "ErrorBoundaryInterceptor", "GatewayGrpcServer", "GatewayServicer", "REQUEST_ID_METADATA"]

log = logging.getLogger(__name__)

#: Trailing metadata key carrying the request id.
REQUEST_ID_METADATA = "x-request-id"
#: Trailing metadata key saying whether a cache answered (as the HTTP header X-LGC-Cache).
CACHE_METADATA = "x-lgc-cache"
_SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
_METHOD_PREFIX = f"/{_SERVICE_NAME}/"


def _usage(usage: Usage | None) -> gateway_pb2.Usage:
    usage = usage or Usage()
    return gateway_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _logprobs(logprobs: Iterable[TokenLogprob]) -> list[gateway_pb2.TokenLogprob]:
    """Log probabilities as the public API sends them."""
    return [
        gateway_pb2.TokenLogprob(
            token_id=lp.token_id,
            token=lp.token,
            logprob=lp.logprob,
            top=[gateway_pb2.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob) for t in lp.top],
            rank=lp.rank or 0,
        )
        for lp in logprobs
    ]


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Generation over gRPC, on the same pipeline as the HTTP API."""

    def __init__(self, pipeline: RequestPipeline) -> None:
        self._pipeline = pipeline

    async def Generate(  # noqa: N802 (the proto names it)
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GenerateResponse:
        started = time.monotonic()
        request_id = new_request_id("gen")
        context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
        with request_context(request_id):
            call = await self._start(request, context, request_id=request_id, stream=False, started=started)
            outcome = "disconnected"
            try:
                if isinstance(call, ChoicesCall):
                    results = await call.results()
                    usage = call.usage()
                else:
                    results = [await call.whole()]
                    usage = results[0].final.usage
                outcome = "ok"
            except BaseException as exc:
                # Only notes the outcome for metrics; the interceptor answers the client.
                outcome = outcome_of(exc)
                raise
            finally:
                await call.close(outcome)
            choices = [
                gateway_pb2.Choice(
                    index=result.index,
                    text=result.final.text,
                    finish_reason=finish_reason_name(result.final),
                    logprobs=_logprobs(result.logprobs or ()),
                    token_ids=result.token_ids or (),
                )
                for result in results
            ]
            first = choices[0]
            # What is about the prompt, once: every choice has the same prompt.
            prompt_ids = next((r.prompt_token_ids for r in results if r.prompt_token_ids), ())
            scored = next((r.prompt_logprobs for r in results if r.prompt_logprobs), ())
            return gateway_pb2.GenerateResponse(
                id=request_id,
                model=results[0].final.model or call.model,
                text=first.text,
                finish_reason=first.finish_reason,
                usage=_usage(usage),
                logprobs=first.logprobs,
                choices=choices,
                prompt_token_ids=prompt_ids,
                prompt_logprobs=_logprobs(scored),
                token_ids=first.token_ids,
            )

    async def GenerateStream(  # noqa: N802 (the proto names it)
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # Written with context.write() rather than as an async generator, so that a client's
        # cancellation lands inside this coroutine and the request is cancelled at once.
        started = time.monotonic()
        request_id = new_request_id("gen")
        context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
        with request_context(request_id):
            call = await self._start(request, context, request_id=request_id, stream=True, started=started)
            outcome = "disconnected"
            choices = call.n if isinstance(call, ChoicesCall) else 1
            streamed: list[list[str]] = [[] for _ in range(choices)]
            ended = 0
            wants_logprobs = call.request.params.logprobs
            wants_ids = call.request.params.return_token_ids
            prompt_ids_sent = False  # the prompt's ids go once (every choice's worker sends them)
            try:
                while True:
                    item = await call.next_event()
                    index, event = (item.index, item.event) if isinstance(item, ChoiceEvent) else (0, item)
                    if event.kind is ReplyKind.DELTA:
                        streamed[index].append(event.text)
                        # A delta of empty text that has log probabilities or token ids is sent too.
                        logprobs = event.logprobs if wants_logprobs else ()
                        token_ids = event.token_ids if wants_ids else ()
                        prompt_ids = event.prompt_token_ids if wants_ids and not prompt_ids_sent else ()
                        prompt_ids_sent = prompt_ids_sent or bool(prompt_ids)
                        if event.text or logprobs or token_ids or prompt_ids:
                            await context.write(
                                gateway_pb2.GenerateChunk(
                                    id=request_id, text=event.text, model=call.model, logprobs=_logprobs(logprobs),
                                    index=index, token_ids=token_ids, prompt_token_ids=prompt_ids,
                                )
                            )
                        continue
                    if event.kind is ReplyKind.ERROR:
                        assert event.error is not None
                        raise ReplyError(event.error)
                    # The choice's final event: any text its deltas did not carry, then its end.
                    ended += 1
                    rest = unsent_text(event, streamed[index])
                    if rest:
                        await context.write(
                            gateway_pb2.GenerateChunk(id=request_id, text=rest, model=call.model, index=index)
                        )
                    last = ended == choices
                    usage = None  # only on the stream's last chunk: every choice's
                    if last:
                        outcome = "ok"
                        usage = _usage(call.usage() if isinstance(call, ChoicesCall) else event.usage)
                    await context.write(
                        gateway_pb2.GenerateChunk(
                            id=request_id,
                            finish_reason=finish_reason_name(event),
                            usage=usage,
                            final=last,
                            model=event.model or call.model,
                            index=index,
                        )
                    )
                    if last:
                        return
            except BaseException as exc:
                # Only notes the outcome for metrics; the interceptor answers the client.
                if outcome != "ok":
                    outcome = outcome_of(exc)
                raise
            finally:
                await call.close(outcome)

    async def _start(
        self,
        request: gateway_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
        *,
        request_id: str,
        stream: bool,
        started: float,
    ) -> GenerationCall | ChoicesCall:
        endpoint = "grpc_generate_stream" if stream else "grpc_generate"
        priority = "unknown"
        try:
            metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            tenant = await self._pipeline.authenticate(metadata.get("authorization"))
            translated = translate_proto(
                request, self._pipeline.settings, stream=stream, default_priority=tenant.default_priority
            )
            priority = translated.priority.value
            submit = self._pipeline.submit if translated.choice_count == 1 else self._pipeline.submit_choices
            call = await submit(
                translated,
                request_id=request_id,
                endpoint=endpoint,
                started=started,
                timeout_s=context.time_remaining(),
                tenant=tenant,
                cache_control=metadata.get("cache-control"),
            )
            context.set_trailing_metadata(
                ((REQUEST_ID_METADATA, request_id), (CACHE_METADATA, call.cache_status.value))
            )
            return call
        except BaseException as exc:
            # Only counts the refusal; the interceptor answers the client.
            self._pipeline.count_refused(endpoint, priority, outcome_of(exc), started)
            raise


def _parser(deserializer: Callable[[bytes], Any] | None) -> Callable[[Any], Any]:
    """`deserializer` that raises InvalidRequestError for bytes that are not its message."""
    if deserializer is None:
        return lambda request: request

    def parse(raw: Any) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            # Safe: whatever the protobuf runtime raises for these bytes (DecodeError, a
            # UnicodeDecodeError in a string field, ...), the client sent something unreadable.
            raise InvalidRequestError(
                f"The request is not a valid {gateway_pb2.GenerateRequest.DESCRIPTOR.full_name} message "
                f"({type(exc).__name__}: {exc})."
            ) from exc

    return parse


class ErrorBoundaryInterceptor(grpc.aio.ServerInterceptor):
    """Turns any exception escaping a Gateway method into a gRPC status with a clear message."""

    def __init__(self, *, retry_after_s: int) -> None:
        self._retry_after_s = retry_after_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_METHOD_PREFIX):
            return handler
        # The request is parsed inside the guard (grpcio answers a message that does not parse
        # with UNKNOWN "Unexpected <class DecodeError>..."): bytes that are not a GenerateRequest
        # are a client's mistake, INVALID_ARGUMENT with what failed.
        parse = _parser(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(handler.unary_unary, parse),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(handler.unary_stream, parse),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _guard_unary(
        self, behavior: Callable[..., Awaitable[Any]], parse: Callable[[Any], Any]
    ) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(parse(request), context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise  # a cancelled call, or a status already set: nothing to translate
            except Exception as exc:
                # Safe: this is the boundary; the client gets a status naming the problem.
                await self._abort(exc, context)

        return guarded

    def _guard_stream(self, behavior: Callable[..., Any], parse: Callable[[Any], Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def guarded_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for message in behavior(parse(request), context):
                        yield message
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise  # a cancelled call, or a status already set: nothing to translate
                except Exception as exc:
                    # Safe: this is the boundary; the client gets a status naming the problem.
                    await self._abort(exc, context)

            return guarded_gen

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> None:
            try:
                await behavior(parse(request), context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise  # a cancelled call, or a status already set: nothing to translate
            except Exception as exc:
                # Safe: this is the boundary; the client gets a status naming the problem.
                await self._abort(exc, context)

        return guarded

    async def _abort(self, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        trailing = tuple(context.trailing_metadata() or ())
        request_id = next((v for k, v in trailing if k == REQUEST_ID_METADATA), None)
        api = map_exception(exc, retry_after_s=self._retry_after_s, request_id=request_id)
        metadata = list(trailing) + [("lgc-error-code", api.code)]
        if api.retry_after_s is not None:
            metadata.append(("retry-after", str(api.retry_after_s)))
        context.set_trailing_metadata(tuple(metadata))
        await context.abort(grpc_status_for(api), api.message)


class GatewayGrpcServer:
    """The grpc.aio server: Gateway service, health and reflection."""

    def __init__(self, pipeline: RequestPipeline, *, host: str, port: int, shutdown_grace_s: float) -> None:
        self._server = grpc.aio.server(
            interceptors=[ErrorBoundaryInterceptor(retry_after_s=pipeline.settings.gateway_retry_after_s)],
            options=[
                ("grpc.max_receive_message_length", pipeline.settings.gateway_max_body_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(pipeline), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self._address = f"{host}:{port}"
        self._shutdown_grace_s = shutdown_grace_s
        self.port: int | None = None

    async def start(self) -> int:
        """Listen and serve; returns the bound port."""
        self.port = self._server.add_insecure_port(self._address)
        if not self.port:
            raise RuntimeError(f"could not bind the gRPC server to {self._address}")
        await self._server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self) -> None:
        """Report NOT_SERVING, let running calls finish within the grace period, then stop."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._shutdown_grace_s)
