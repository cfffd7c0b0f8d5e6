"""The gateway's errors and the ONE place that turns any exception into an answer for a client.

Every failure, whatever raised it, goes through :func:`map_exception`, which gives an
:class:`ApiError`: the HTTP status, the OpenAI error object (`{"error": {"message", "type", "param",
"code"}}`), a Retry-After value when retrying later may help, and the metrics outcome. The gRPC API
derives its status code from the same result (:func:`grpc_status_for`), so HTTP and gRPC clients
always hear the same story.

Status choices that OpenAI's API does not fix (documented in the README):

* ReplyEvent `cancelled` -> 400 `request_cancelled`: the request was stopped on purpose (an
  operator, or this client's earlier disconnect); retrying it blindly would be wrong, and 408/409
  are retried automatically by OpenAI's clients.
* ReplyEvent `overloaded` and `no_workers` -> 503 with Retry-After: the cluster, not this client,
  is over its limit (429 stays reserved for this gateway's own in-flight bound).
* ReplyEvent `worker_failed` and `internal` -> 502: a component behind the gateway failed.
* The client went away -> 499 (nginx's convention; nobody reads it, it only shows in metrics).
* The guardian blocked the answer of a blocking-mode tenant -> 400 `content_filter` (type
  `invalid_request_error`): Azure OpenAI's code for filtered content, so clients that handle it
  handle ours, and a 4xx is not retried automatically by OpenAI's clients (the same request would
  be blocked again).
* The guardian could not judge it in time -> 503 `guardian_unavailable` with Retry-After (fail
  closed; `LGC_GATEWAY_GUARD_FAIL_OPEN` delivers the answer unjudged instead).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from shared.records import ErrorCode, ErrorInfo

__all__ = [
    "ApiError",
    "ClientDisconnectedError",
    "ContentFilteredError",
    "EngineUnavailableError",
    "GatewayError",
    "GatewayTimeoutError",
    "GuardianUnavailableError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NoWorkersError",
    "ReplyError",
    "RequestTooLargeError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "grpc_status_for",
    "map_exception",
    "outcome_of",
]

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """A failure the gateway knows how to explain; subclasses fix the status and error type."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    outcome: str = "internal"
    retry_after: bool = False
    retry_after_s: int | None = None
    """A Retry-After this failure knows better than the gateway's default (rate limits)."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class InvalidRequestError(GatewayError):
    """The request is malformed or asks for something the gateway does not support."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"
    outcome = "invalid_request"


class UnauthorizedError(GatewayError):
    """API keys are configured and the request has none, or one that is not known."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    outcome = "unauthorized"


class ModelNotFoundError(GatewayError):
    """Workers are registered, but none serves the model asked for."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    outcome = "model_not_found"


class RequestTooLargeError(GatewayError):
    """The request body is larger than `gateway_max_body_bytes`."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    outcome = "too_large"


class TooManyRequestsError(GatewayError):
    """A bound was reached: this instance's in-flight bound, a tenant's rate limit (code
    `rate_limit_exceeded`, with the Retry-After the limit computed), or the request-topic lag bound
    (code `overloaded`)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    outcome = "rate_limited"
    retry_after = True


class NoWorkersError(GatewayError):
    """No worker is registered, so nothing could answer."""

    status = 503
    type = "server_error"
    code = "no_workers"
    outcome = "no_workers"
    retry_after = True


class EngineUnavailableError(GatewayError):
    """Kafka or the worker registry could not be reached."""

    status = 503
    type = "server_error"
    code = "service_unavailable"
    outcome = "unavailable"
    retry_after = True


class ContentFilteredError(GatewayError):
    """The guardian's verdict on the answer of a blocking-mode tenant is `block`: the answer is
    never sent (see the module docstring for the status)."""

    status = 400
    type = "invalid_request_error"
    code = "content_filter"
    outcome = "blocked"


class GuardianUnavailableError(GatewayError):
    """A blocking-mode tenant's answer could not be judged (the guardian did not answer in time, or
    answered with an error): fail closed."""

    status = 503
    type = "server_error"
    code = "guardian_unavailable"
    outcome = "guardian_unavailable"
    retry_after = True


class GatewayTimeoutError(GatewayError):
    """The request's deadline passed before its answer came back."""

    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"
    outcome = "timeout"


class ClientDisconnectedError(GatewayError):
    """The client went away before the answer was complete."""

    status = 499
    type = "client_closed_request"
    code = "client_disconnected"
    outcome = "disconnected"


#: ReplyEvent error code -> (HTTP status, OpenAI error type, metrics outcome, Retry-After?).
_REPLY_ERRORS: dict[ErrorCode, tuple[int, str, str, bool]] = {
    ErrorCode.DEADLINE_EXCEEDED: (504, "timeout_error", "timeout", False),
    ErrorCode.CANCELLED: (400, "request_cancelled", "cancelled", False),
    ErrorCode.OVERLOADED: (503, "server_error", "overloaded", True),
    ErrorCode.INVALID_REQUEST: (400, "invalid_request_error", "invalid_request", False),
    ErrorCode.MODEL_NOT_FOUND: (404, "invalid_request_error", "model_not_found", False),
    ErrorCode.WORKER_FAILED: (502, "server_error", "upstream_error", False),
    ErrorCode.NO_WORKERS: (503, "server_error", "no_workers", True),
    ErrorCode.INTERNAL: (502, "server_error", "upstream_error", False),
    # Judged at the batcher (blocking mode enforced where answers leave it): same answers as the
    # gateway's own blocking check gives.
    ErrorCode.CONTENT_FILTER: (400, "invalid_request_error", "blocked", False),
    ErrorCode.GUARDIAN_UNAVAILABLE: (503, "server_error", "guardian_unavailable", True),
}


class ReplyError(GatewayError):
    """The cluster ended the request with an error ReplyEvent."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message or info.code.value, code=info.code.value)
        self.info = info
        self.status, self.type, self.outcome, self.retry_after = _REPLY_ERRORS[info.code]


@dataclass(frozen=True, slots=True)
class ApiError:
    """What a client is told about a failure."""

    status: int
    type: str
    code: str
    message: str
    param: str | None = None
    retry_after_s: int | None = None
    outcome: str = "internal"

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response_headers(self) -> dict[str, str]:
        """Headers that go with it (Retry-After where retrying later may help)."""
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}

    def json_bytes(self) -> bytes:
        """The error object as JSON. ASCII-escaped: a message may quote client input, which can
        hold lone surrogates that UTF-8 cannot encode."""
        return json.dumps(self.body()).encode()

    def sse_event(self) -> str:
        """The error as an SSE event, for failures after a stream has started."""
        return f"data: {json.dumps(self.body())}\n\n"


def map_exception(exc: BaseException, *, retry_after_s: int = 1, request_id: str | None = None) -> ApiError:
    """Turn any exception into the answer a client gets. Unexpected ones become 500 and are
    logged with their traceback and the request id (bad input never lands there)."""
    if isinstance(exc, GatewayError):
        return ApiError(
            status=exc.status,
            type=exc.type,
            code=exc.code,
            message=exc.message,
            param=exc.param,
            retry_after_s=(exc.retry_after_s or retry_after_s) if exc.retry_after else None,
            outcome=exc.outcome,
        )
    if isinstance(exc, RequestValidationError):
        return _from_validation_errors(list(exc.errors()), strip_body=True)
    if isinstance(exc, ValidationError):
        return _from_validation_errors(list(exc.errors()), strip_body=False)
    log.error(
        "unexpected error while serving a request",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"request_id": request_id} if request_id else None,
    )
    return ApiError(
        status=500,
        type="server_error",
        code="internal_error",
        message="The gateway failed unexpectedly; the error was logged"
        + (f" with request id {request_id}." if request_id else "."),
        outcome="internal",
    )


def outcome_of(exc: BaseException) -> str:
    """The metrics outcome of a failure, without logging anything (see map_exception)."""
    if isinstance(exc, GatewayError):
        return exc.outcome
    if isinstance(exc, RequestValidationError | ValidationError):
        return "invalid_request"
    if isinstance(exc, asyncio.CancelledError):
        return "disconnected"
    return "internal"


def _from_validation_errors(errors: list[Any], *, strip_body: bool) -> ApiError:
    """A pydantic/FastAPI validation failure as 400, naming the first offending parameter."""
    if not errors:
        return ApiError(400, "invalid_request_error", "invalid_value", "Invalid request.", outcome="invalid_request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if strip_body and loc and loc[0] == "body":
        loc = loc[1:]
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return ApiError(
            400,
            "invalid_request_error",
            "invalid_json",
            f"The request body is not valid JSON{': ' + detail if detail else ''}.",
            outcome="invalid_request",
        )
    param = _param_path(loc)
    message = str(first.get("msg", "invalid value"))
    # pydantic prefixes messages of custom validators; the parameter name says more.
    message = message.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return ApiError(
            400,
            "invalid_request_error",
            "unsupported_parameter",
            f"Unrecognized request argument supplied: {param}",
            param=param,
            outcome="invalid_request",
        )
    if kind == "missing" and not param:
        return ApiError(
            400,
            "invalid_request_error",
            "missing_body",
            "The request body is missing; send a JSON object (Content-Type: application/json).",
            outcome="invalid_request",
        )
    if kind == "missing":
        message = f"Missing required parameter: '{param}'."
        code = "missing_required_parameter"
    elif not param:
        code = "invalid_request"
        message = f"Invalid request body: {message}" if kind != "model_attributes_type" else (
            "The request body must be a JSON object (Content-Type: application/json)."
        )
    else:
        code = "invalid_value"
        message = f"Invalid value for '{param}': {message}"
    more = len(errors) - 1
    if more > 0:
        message += f" ({more} more problem{'s' if more > 1 else ''} in the request)"
    return ApiError(400, "invalid_request_error", code, message, param=param or None, outcome="invalid_request")


def _param_path(loc: list[str]) -> str:
    """`['messages', '0', 'role']` -> `messages[0].role` (OpenAI's way of naming a parameter).
    Union-member tags that pydantic puts in locations (`str`, `list[...]`) are dropped."""
    out = ""
    for part in loc:
        if part.isdigit():
            out += f"[{part}]"
        elif "[" in part or part in {"str", "int", "float", "bool", "dict", "list", "none"} or part.startswith(
            "function-"
        ):
            continue
        else:
            out += f".{part}" if out else part
    return out


#: HTTP status -> gRPC status code.
_GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status_for(error: ApiError) -> grpc.StatusCode:
    """The gRPC status code for the same failure (a cancelled request is CANCELLED)."""
    if error.code == ErrorCode.CANCELLED.value:
        return grpc.StatusCode.CANCELLED
    return _GRPC_CODES.get(error.status, grpc.StatusCode.INTERNAL)
