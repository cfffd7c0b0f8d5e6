"""The guardian's HTTP API: `POST /v1/guard/check` plus /metrics, /health and /ready.

The check runs the same pipeline as the consumers (verdict cache, detectors on the thread pool) with
every detector (never sampled), and answers with the GuardianVerdict record as JSON (request id: the
one given, else `check-<hex>`); it is not published to Kafka. Bad input gets a 4xx with an error
object naming each bad field, never a 500. The gateway calls it for tenants in blocking mode.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.guardian.metrics import GuardianMetrics
from services.guardian.subjects import Subject
from services.guardian.verdict_pipeline import VerdictPipeline
from shared.ops_server import add_ops_routes
from shared.records import MAX_TEXT_CHARS, RequestId, TenantName

__all__ = ["CheckRequest", "create_app"]

log = logging.getLogger(__name__)


class CheckRequest(BaseModel):
    """Body of `POST /v1/guard/check`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    text: str = Field(max_length=MAX_TEXT_CHARS)
    """The text to judge."""
    kind: Literal["prompt", "response"] = "response"
    """Whether it is a user's prompt or a model's response."""
    tenant: TenantName = "default"
    """Whose text it is (reported in the verdict)."""
    request_id: RequestId | None = None
    """The request the text belongs to (reported in the verdict); none: `check-<32 hex>`."""


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body", "message": err.get("msg", "")}
        for err in exc.errors()
    ]
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request"
    return JSONResponse(
        status_code=422,
        content={"error": {"type": "invalid_request_error", "message": message, "details": problems}},
    )


def _evaluation_failed(request: Request, exc: Exception) -> JSONResponse:
    # A detector bug is not the caller's fault: logged with its traceback, answered with an error
    # object (never a bare 500 page).
    log.error("check failed", exc_info=(type(exc), exc, exc.__traceback__))
    return JSONResponse(
        status_code=500,
        content={"error": {"type": "server_error", "message": f"the evaluation failed: {type(exc).__name__}"}},
    )


def create_app(
    pipeline: VerdictPipeline,
    metrics: GuardianMetrics,
    ready: Callable[[], bool],
) -> FastAPI:
    """The guardian's FastAPI app (its only I/O: the verdict cache in Redis)."""
    app = FastAPI(title="LLM Guardian Cluster guardian", docs_url="/docs", redoc_url=None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _evaluation_failed)
    add_ops_routes(app, metrics.registry, ready)

    @app.post("/v1/guard/check")
    async def check(body: CheckRequest) -> JSONResponse:
        request_id = body.request_id or f"check-{uuid.uuid4().hex}"
        verdict = await pipeline.check(Subject(request_id, body.tenant, body.kind, body.text))
        return JSONResponse(verdict.model_dump(mode="json"))

    return app
