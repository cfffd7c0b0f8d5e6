"""The one exception -> client answer mapping (HTTP and gRPC)."""

from __future__ import annotations

import logging

import grpc
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from shared.records import ErrorCode, ErrorInfo

from services.gateway.errors import (
    ClientDisconnectedError,
    EngineUnavailableError,
    GatewayTimeoutError,
    InvalidRequestError,
    ModelNotFoundError,
    NoWorkersError,
    ReplyError,
    RequestTooLargeError,
    TooManyRequestsError,
    grpc_status_for,
    map_exception,
    outcome_of,
)
from services.gateway.openai_protocol import ChatCompletionRequest


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code", "retry"),
    [
        (InvalidRequestError("bad", param="x"), 400, "invalid_request_error", "invalid_value", False),
        (ModelNotFoundError("no"), 404, "invalid_request_error", "model_not_found", False),
        (RequestTooLargeError("big"), 413, "invalid_request_error", "request_too_large", False),
        (TooManyRequestsError("busy"), 429, "rate_limit_error", "rate_limit_exceeded", True),
        (NoWorkersError("none"), 503, "server_error", "no_workers", True),
        (EngineUnavailableError("down"), 503, "server_error", "service_unavailable", True),
        (GatewayTimeoutError("slow"), 504, "timeout_error", "deadline_exceeded", False),
        (ClientDisconnectedError("gone"), 499, "client_closed_request", "client_disconnected", False),
    ],
)
def test_gateway_errors(exc: Exception, status: int, type_: str, code: str, retry: bool) -> None:
    api = map_exception(exc, retry_after_s=7)
    assert (api.status, api.type, api.code) == (status, type_, code)
    assert api.body() == {"error": {"message": str(exc), "type": type_, "param": getattr(exc, "param", None), "code": code}}
    assert api.response_headers() == ({"Retry-After": "7"} if retry else {})


@pytest.mark.parametrize(
    ("code", "status", "grpc_code"),
    [
        (ErrorCode.DEADLINE_EXCEEDED, 504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (ErrorCode.CANCELLED, 400, grpc.StatusCode.CANCELLED),
        (ErrorCode.OVERLOADED, 503, grpc.StatusCode.UNAVAILABLE),
        (ErrorCode.INVALID_REQUEST, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorCode.MODEL_NOT_FOUND, 404, grpc.StatusCode.NOT_FOUND),
        (ErrorCode.WORKER_FAILED, 502, grpc.StatusCode.UNAVAILABLE),
        (ErrorCode.NO_WORKERS, 503, grpc.StatusCode.UNAVAILABLE),
        (ErrorCode.INTERNAL, 502, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_every_reply_error_code_is_mapped(code: ErrorCode, status: int, grpc_code: grpc.StatusCode) -> None:
    api = map_exception(ReplyError(ErrorInfo(code=code, message="why")))
    assert api.status == status and api.code == code.value and api.message == "why"
    assert grpc_status_for(api) is grpc_code


def test_every_error_code_has_a_mapping() -> None:
    for code in ErrorCode:
        assert map_exception(ReplyError(ErrorInfo(code=code, message="m"))).status in (400, 404, 502, 503, 504)


def test_validation_errors_name_the_parameter() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "temperature": 9})
    api = map_exception(caught.value)
    assert api.status == 400 and api.param == "temperature" and "temperature" in api.message

    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"messages": [{"role": "robot", "content": "x"}]})
    assert map_exception(caught.value).param == "messages[0].role"

    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({})
    api = map_exception(caught.value)
    assert api.code == "missing_required_parameter" and api.param == "messages"

    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "wat": 1})
    api = map_exception(caught.value)
    assert api.code == "unsupported_parameter" and api.message == "Unrecognized request argument supplied: wat"


def test_fastapi_validation_errors_are_400_not_422() -> None:
    json_error = RequestValidationError(
        [{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error", "input": {}, "ctx": {"error": "Expecting value"}}]
    )
    api = map_exception(json_error)
    assert (api.status, api.code) == (400, "invalid_json") and "Expecting value" in api.message
    body_error = RequestValidationError([{"type": "greater_than", "loc": ("body", "max_tokens"), "msg": "Input should be greater than 0"}])
    api = map_exception(body_error)
    assert (api.status, api.param) == (400, "max_tokens")


def test_unexpected_errors_are_500_and_logged_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="services.gateway.errors"):
        api = map_exception(ZeroDivisionError("boom"), request_id="chatcmpl-123")
    assert api.status == 500 and api.type == "server_error"
    assert "chatcmpl-123" in api.message
    (record,) = caplog.records
    assert record.request_id == "chatcmpl-123" and record.exc_info is not None
    assert grpc_status_for(api) is grpc.StatusCode.INTERNAL


def test_sse_error_event() -> None:
    api = map_exception(GatewayTimeoutError("slow"))
    assert api.sse_event().startswith('data: {"error": {"message": "slow"')
    assert api.sse_event().endswith("\n\n")


def test_outcomes() -> None:
    assert outcome_of(TooManyRequestsError("x")) == "rate_limited"
    assert outcome_of(ReplyError(ErrorInfo(code=ErrorCode.OVERLOADED, message=""))) == "overloaded"
    assert outcome_of(RuntimeError()) == "internal"


def test_unauthorized_and_rate_limit_retry_after() -> None:
    from services.gateway.errors import TooManyRequestsError, UnauthorizedError

    api = map_exception(UnauthorizedError("no key"), retry_after_s=1)
    assert (api.status, api.type, api.code, api.retry_after_s) == (401, "invalid_request_error", "invalid_api_key", None)
    assert grpc_status_for(api) is grpc.StatusCode.UNAUTHENTICATED
    limited = map_exception(TooManyRequestsError("slow down", retry_after_s=17), retry_after_s=1)
    assert limited.status == 429 and limited.response_headers() == {"Retry-After": "17"}
    default = map_exception(TooManyRequestsError("busy"), retry_after_s=3)
    assert default.response_headers() == {"Retry-After": "3"}
    overloaded = map_exception(TooManyRequestsError("behind", code="overloaded"), retry_after_s=1)
    assert overloaded.code == "overloaded" and overloaded.type == "rate_limit_error"
