"""The OpenAI-compatible HTTP API (FastAPI): /v1/chat/completions, /v1/completions, /v1/models,
plus /health, /ready and /metrics.

Every failure is answered with OpenAI's error object through :func:`errors.map_exception` (request
validation included: never FastAPI's 422 shape). Errors that happen before the first token —
refusals, model look-up, an error ReplyEvent as the first event — get a real HTTP status even for
streaming requests, because the stream's headers are sent only once the first event is in; errors
after that are sent as an SSE `data: {"error": ...}` event followed by `data: [DONE]`.

A client that disconnects while waiting is noticed (the ASGI `http.disconnect` message) and its
request is cancelled in the cluster.

A request of several choices (`n` > 1, or a completion request's list of prompts;
parallel_sampling.py) is answered from a ChoicesCall: a whole answer once every choice is finished
(or the error of the first that fails, the others cancelled); a stream with every choice's chunks
interleaved as they come (`_sse_choices_stream`). Requests of one choice take the single-choice
path, unchanged.

A completion request with `echo` gets each choice's prompt before its text: in a whole answer, in
the choice's `text`; in a stream, as the choice's first chunk (vLLM puts it in the first chunk that
has text). It is added here, at the edge, so the cluster and the caches only ever hold generated
text. With `max_tokens` 0 the cluster generates one token, which is not shown (vLLM's echo
without generation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from shared.ops_server import add_ops_routes
from shared.records import Priority, ReplyEvent, ReplyKind, Usage
from shared.structured_logging import request_context

from services.gateway.body_limit import BodySizeLimit
from services.gateway.errors import (
    ApiError,
    ClientDisconnectedError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    ReplyError,
    RequestTooLargeError,
    map_exception,
)
from services.gateway.openai_protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCardOut,
    ModelList,
    TextCompletion,
)
from services.gateway.parallel_sampling import ChoiceEvent, ChoiceResult
from services.gateway.request_pipeline import ChoicesCall, GenerationCall, RequestPipeline
from services.gateway.request_translation import (
    PRIORITY_HEADER,
    TranslatedRequest,
    new_request_id,
    translate_chat,
    translate_completion,
)
from services.gateway.response_format import (
    ChatStreamFormatter,
    CompletionStreamFormatter,
    StreamFormatter,
    chat_completion_choices,
    echoed,
    text_completion_choices,
)

__all__ = ["CACHE_HEADER", "REQUEST_ID_HEADER", "build_http_app"]

#: Response header carrying the request id.
REQUEST_ID_HEADER = "X-Request-Id"
#: Response header saying whether a cache answered: hit-exact, hit-semantic, miss or bypass.
CACHE_HEADER = "X-LGC-Cache"

_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid or unsupported request."},
    401: {"model": ErrorResponse, "description": "Missing or unknown API key (when keys are configured)."},
    404: {"model": ErrorResponse, "description": "No worker serves the model."},
    413: {"model": ErrorResponse, "description": "Request body too large."},
    429: {"model": ErrorResponse, "description": "Rate limit, in-flight bound or queue bound reached; see Retry-After."},
    500: {"model": ErrorResponse, "description": "Unexpected gateway failure."},
    502: {"model": ErrorResponse, "description": "A worker or batcher failed."},
    503: {"model": ErrorResponse, "description": "No workers, or the cluster is overloaded; see Retry-After."},
    504: {"model": ErrorResponse, "description": "The request's deadline passed."},
}

#: A streamed answer: Server-Sent Events. Before OpenAPI 3.2 (FastAPI writes 3.1) a stream's
#: `schema` describes each event, as 3.2's `itemSchema` does: an object whose `data` is one JSON
#: chunk (or `[DONE]`). Schemathesis validates every event against it (`{"type": "string"}`
#: here failed its ST108 check whenever it generated `"stream": true`).
_SSE_RESPONSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "properties": {
                "data": {"type": "string", "description": "a JSON chunk, or [DONE] at the end"},
                "event": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
            },
            "required": ["data"],
        }
    }
}

T = TypeVar("T")

class _WholeAnswer(Protocol):
    """Builds a whole answer (`chat_completion_choices`, `text_completion_choices`)."""

    def __call__(
        self,
        request_id: str,
        created: int,
        model: str,
        results: Sequence[ChoiceResult],
        usage: Usage | None,
        *,
        tokens_as_ids: bool = False,
    ) -> ChatCompletion | TextCompletion: ...


def build_http_app(
    pipeline: RequestPipeline,
    *,
    registry: CollectorRegistry,
    ready: Callable[[], bool],
) -> FastAPI:
    """The gateway's HTTP application."""
    settings = pipeline.settings
    retry_after_s = settings.gateway_retry_after_s
    app = FastAPI(
        title="LLM Guardian Cluster gateway",
        version="1.0.0",
        description="OpenAI-compatible chat and text completions served by an LLM cluster over Kafka.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.gateway_max_body_bytes)

    def error_response(api: ApiError, headers: dict[str, str] | None = None) -> Response:
        return Response(
            api.json_bytes(),
            status_code=api.status,
            media_type="application/json",
            headers={**(headers or {}), **api.response_headers()},
        )

    def refused_before_endpoint(request: Request, exc: Exception) -> Response:
        api = map_exception(exc, retry_after_s=retry_after_s)
        endpoint = _ENDPOINTS.get(request.url.path)
        if endpoint is not None:
            pipeline.count_refused(endpoint, "unknown", api.outcome, time.monotonic())
        return error_response(api)

    @app.exception_handler(RequestValidationError)
    async def _validation_failed(request: Request, exc: RequestValidationError) -> Response:
        return refused_before_endpoint(request, exc)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return refused_before_endpoint(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 413:
            return refused_before_endpoint(request, RequestTooLargeError(str(exc.detail)))
        if exc.status_code == 400:
            return refused_before_endpoint(request, InvalidRequestError(str(exc.detail)))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        api = ApiError(exc.status_code, "invalid_request_error", code, str(exc.detail), outcome="invalid_request")
        return error_response(api, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return error_response(map_exception(exc))

    add_ops_routes(app, registry, ready)

    async def authenticated(request: Request) -> None:
        """Runs before the body is validated (FastAPI calls dependencies first), so a request
        without a valid key gets 401 whatever its body, as OpenAI answers; the tenant is kept on
        the request for the endpoint."""
        request.state.tenant = await pipeline.authenticate(request.headers.get("authorization"))

    async def generate(
        request: Request,
        *,
        endpoint: str,
        id_kind: str,
        translate: Callable[[Priority], TranslatedRequest],
        whole: _WholeAnswer,
        formatter_type: type[StreamFormatter],
    ) -> Response:
        started = time.monotonic()
        request_id = new_request_id(id_kind)
        headers = {REQUEST_ID_HEADER: request_id, CACHE_HEADER: "miss"}
        priority = "unknown"
        with request_context(request_id):
            try:
                tenant = request.state.tenant  # set by `authenticated`, before the body was read
                translated = translate(tenant.default_priority)
                priority = translated.priority.value
                submit = pipeline.submit if translated.choice_count == 1 else pipeline.submit_choices
                call = await submit(
                    translated,
                    request_id=request_id,
                    endpoint=endpoint,
                    started=started,
                    tenant=tenant,
                    cache_control=request.headers.get("cache-control"),
                )
                headers[CACHE_HEADER] = call.cache_status.value
            except Exception as exc:
                # Safe: every failure becomes the client's error answer here (bad input -> 4xx).
                api = map_exception(exc, retry_after_s=retry_after_s, request_id=request_id)
                pipeline.count_refused(endpoint, priority, api.outcome, started)
                return error_response(api, headers)
            if isinstance(call, ChoicesCall):
                return await answer_choices(request, call, translated, whole, formatter_type, headers)
            try:
                if not translated.stream:
                    result = await _until_disconnect(request, call.whole())
                    await call.close("ok")
                    final = result.final
                    if translated.echo:
                        result = echoed(
                            result,
                            call.request.prompt or "",
                            prompt_only=translated.prompt_only,
                            top=translated.params.top_logprobs,
                        )
                    body = whole(
                        request_id, call.created, call.model, [result], final.usage,
                        tokens_as_ids=translated.tokens_as_ids,
                    )
                    # Serialized by pydantic in one step (model_dump + json.dumps did it twice).
                    return Response(body.model_dump_json(), media_type="application/json", headers=headers)
                first = await _until_disconnect(request, call.next_event())
                if first.kind is ReplyKind.ERROR:
                    assert first.error is not None
                    raise ReplyError(first.error)
            except Exception as exc:
                # Safe: the call is closed (cancelling unfinished work) and the client answered.
                api = map_exception(exc, retry_after_s=retry_after_s, request_id=request_id)
                await call.close(api.outcome)
                return error_response(api, headers)
            except BaseException:
                # The endpoint itself is being cancelled (server shutdown): close, then go on.
                await call.close("disconnected")
                raise
        formatter = formatter_type(
            request_id,
            call.created,
            call.model,
            include_usage=call.include_usage,
            logprobs=call.request.params.logprobs,
            echo=(call.request.prompt or "") if translated.echo else "",
            prompt_only=translated.prompt_only,
            echo_decoded=translated.echo and call.request.prompt_token_ids is not None,
            token_ids=call.request.params.return_token_ids,
            tokens_as_ids=translated.tokens_as_ids,
        )
        return _ClosingStreamingResponse(
            _sse_stream(call, first, formatter, retry_after_s),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def answer_choices(
        request: Request,
        call: ChoicesCall,
        translated: TranslatedRequest,
        whole: _WholeAnswer,
        formatter_type: type[StreamFormatter],
        headers: dict[str, str],
    ) -> Response:
        """The answer to a request of several choices (see the module docstring); as for one
        choice, a failure before the stream starts is a real HTTP status. With `echo`, each
        choice's text comes after its prompt."""
        echo, prompt_only = translated.echo, translated.prompt_only
        request_id = call.request_id
        try:
            if not call.request.stream:
                results = await _until_disconnect(request, call.results())
                await call.close("ok")
                if echo:
                    results = [
                        echoed(
                            result,
                            call.children[result.index].prompt or "",
                            prompt_only=prompt_only,
                            top=translated.params.top_logprobs,
                        )
                        for result in results
                    ]
                body = whole(
                    request_id, call.created, call.model, results, call.usage(), tokens_as_ids=translated.tokens_as_ids
                )
                return Response(body.model_dump_json(), media_type="application/json", headers=headers)
            first = await _until_disconnect(request, call.next_event())
            if first.event.kind is ReplyKind.ERROR:
                assert first.event.error is not None
                raise ReplyError(first.event.error)
        except Exception as exc:
            # Safe: the call is closed (cancelling every unfinished choice) and the client answered.
            api = map_exception(exc, retry_after_s=retry_after_s, request_id=request_id)
            await call.close(api.outcome)
            return error_response(api, headers)
        except BaseException:
            # The endpoint itself is being cancelled (server shutdown): close, then go on.
            await call.close("disconnected")
            raise
        formatters = [
            formatter_type(
                request_id,
                call.created,
                call.model,
                include_usage=call.include_usage,
                logprobs=call.request.params.logprobs,
                index=index,
                echo=(call.children[index].prompt or "") if echo else "",
                prompt_only=prompt_only,
                echo_decoded=echo and call.children[index].prompt_token_ids is not None,
                token_ids=call.request.params.return_token_ids,
                tokens_as_ids=translated.tokens_as_ids,
            )
            for index in range(call.n)
        ]
        return _ClosingStreamingResponse(
            _sse_choices_stream(call, first, formatters, retry_after_s),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post(
        "/v1/chat/completions",
        dependencies=[Depends(authenticated)],
        response_model=ChatCompletion,
        responses={200: {"content": _SSE_RESPONSE, "description": "The answer, or an SSE stream."}, **_ERROR_RESPONSES},
        summary="Create a chat completion",
    )
    async def create_chat_completion(
        body: ChatCompletionRequest,
        request: Request,
        x_lgc_priority: Annotated[
            str | None, Header(alias=PRIORITY_HEADER, description="high, normal or low (body `priority` wins).")
        ] = None,
    ) -> Response:
        return await generate(
            request,
            endpoint="chat",
            id_kind="chatcmpl",
            translate=lambda default: translate_chat(
                body, settings, priority_header=x_lgc_priority, default_priority=default
            ),
            whole=chat_completion_choices,
            formatter_type=ChatStreamFormatter,
        )

    @app.post(
        "/v1/completions",
        dependencies=[Depends(authenticated)],
        response_model=TextCompletion,
        responses={200: {"content": _SSE_RESPONSE, "description": "The answer, or an SSE stream."}, **_ERROR_RESPONSES},
        summary="Create a text completion",
    )
    async def create_completion(
        body: CompletionRequest,
        request: Request,
        x_lgc_priority: Annotated[
            str | None, Header(alias=PRIORITY_HEADER, description="high, normal or low (body `priority` wins).")
        ] = None,
    ) -> Response:
        return await generate(
            request,
            endpoint="completions",
            id_kind="cmpl",
            translate=lambda default: translate_completion(
                body, settings, priority_header=x_lgc_priority, default_priority=default
            ),
            whole=text_completion_choices,
            formatter_type=CompletionStreamFormatter,
        )

    @app.get("/v1/models", response_model=ModelList, responses={401: _ERROR_RESPONSES[401], 503: _ERROR_RESPONSES[503]}, summary="List models")
    async def list_models(request: Request) -> ModelList:
        await pipeline.authenticate(request.headers.get("authorization"))
        cards = await pipeline.engine.models()
        return ModelList(data=[ModelCardOut(id=c.name, created=int(c.first_seen)) for c in cards])

    @app.get(
        "/v1/models/{model:path}",
        response_model=ModelCardOut,
        responses={401: _ERROR_RESPONSES[401], 404: _ERROR_RESPONSES[404], 503: _ERROR_RESPONSES[503]},
        summary="Retrieve a model",
    )
    async def retrieve_model(model: str, request: Request) -> ModelCardOut:
        await pipeline.authenticate(request.headers.get("authorization"))
        for card in await pipeline.engine.models():
            if card.name == model:
                return ModelCardOut(id=card.name, created=int(card.first_seen))
        raise ModelNotFoundError(f"The model '{model}' is not served here.", param="model")

    def openapi() -> dict[str, Any]:
        # Validation failures are answered with 400 and OpenAI's error object, so FastAPI's
        # default 422 entries would describe answers that never happen.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            # The API key, as OpenAI clients send it. Declared on the /v1 routes only: health,
            # readiness, metrics and this document are open. With no keys configured the gateway
            # runs open and ignores the header.
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <API key>`."}
            }
            for route_path, path in schema.get("paths", {}).items():
                if route_path.startswith("/v1/"):
                    for operation in path.values():
                        operation["security"] = [{"ApiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _sse_stream(
    call: GenerationCall, first: ReplyEvent, formatter: StreamFormatter, retry_after_s: int
) -> AsyncIterator[str]:
    """The SSE body of a streamed answer; closes the call however it ends."""
    outcome = "disconnected"
    try:
        for chunk in formatter.opening():
            yield chunk
        event = first
        while True:
            if event.kind is ReplyKind.DELTA:
                for chunk in formatter.delta(event):
                    yield chunk
            elif event.kind is ReplyKind.FINAL:
                outcome = "ok"
                for chunk in formatter.final(event):
                    yield chunk
                return
            else:
                assert event.error is not None
                api = map_exception(ReplyError(event.error), retry_after_s=retry_after_s)
                outcome = api.outcome
                for chunk in formatter.error(api):
                    yield chunk
                return
            event = await call.next_event()
    except Exception as exc:
        # Safe: headers are gone, so the failure is told in the stream, which then ends.
        api = map_exception(exc, retry_after_s=retry_after_s, request_id=call.request_id)
        outcome = api.outcome
        for chunk in formatter.error(api):
            yield chunk
    finally:
        await call.close(outcome)


async def _sse_choices_stream(
    call: ChoicesCall, first: ChoiceEvent, formatters: Sequence[StreamFormatter], retry_after_s: int
) -> AsyncIterator[str]:
    """The SSE body of a streamed answer of several choices: every choice's opening, their chunks
    as they come (each formatter keeps its choice's state), each choice's last chunk, then once the
    usage of all (when asked for) and `[DONE]`. A failure of any choice ends the stream with the
    error event and `[DONE]`; closing the call, however it ends, cancels the unfinished choices."""
    outcome = "disconnected"
    try:
        for formatter in formatters:
            for chunk in formatter.opening():
                yield chunk
        item = first
        while True:
            event = item.event
            formatter = formatters[item.index]
            if event.kind is ReplyKind.DELTA:
                for chunk in formatter.delta(event):
                    yield chunk
            elif event.kind is ReplyKind.FINAL:
                for chunk in formatter.finish(event):
                    yield chunk
                if call.finished == call.n:
                    outcome = "ok"
                    for chunk in formatter.ending(call.usage()):
                        yield chunk
                    return
            else:
                assert event.error is not None
                api = map_exception(ReplyError(event.error), retry_after_s=retry_after_s)
                outcome = api.outcome
                for chunk in formatter.error(api):
                    yield chunk
                return
            item = await call.next_event()
    except Exception as exc:
        # Safe: headers are gone, so the failure is told in the stream, which then ends.
        api = map_exception(exc, retry_after_s=retry_after_s, request_id=call.request_id)
        outcome = api.outcome
        for chunk in formatters[0].error(api):
            yield chunk
    finally:
        await call.close(outcome)


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, so a client that disconnects
    mid-stream has its request cancelled at once rather than when the generator is collected."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, unless the client disconnects first: then cancel it (which cancels the
    request in the cluster) and raise ClientDisconnectedError."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # We are being cancelled ourselves (shutdown): take both down, and wait until they are
        # down so the caller may close the request's event stream safely.
        work_task.cancel()
        watch_task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
        raise
    watch_task.cancel()
    await asyncio.gather(watch_task, return_exceptions=True)
    if work_task.done():
        return work_task.result()
    work_task.cancel()
    await asyncio.gather(work_task, return_exceptions=True)
    raise ClientDisconnectedError("The client disconnected before the answer was ready.")


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away (the body has been read, so only that message can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
