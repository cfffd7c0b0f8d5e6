"""The guardian's HTTP API: `POST /v1/guard/check` plus /metrics, /health and /ready.

The check runs the same evaluator as the results consumer and answers with the GuardianVerdict
record as JSON (request id `check-<hex>`); it is not published to Kafka. Bad input gets a 4xx with
an error object naming each bad field, never a 500.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.guardian.evaluator import Evaluation, Evaluator
from services.guardian.metrics import GuardianMetrics
from shared.ops_server import add_ops_routes
from shared.records import MAX_TEXT_CHARS, TenantName

__all__ = ["CheckRequest", "create_app"]


class CheckRequest(BaseModel):
    """Body of `POST /v1/guard/check`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    text: str = Field(max_length=MAX_TEXT_CHARS)
    """The text to judge."""
    kind: Literal["prompt", "response"] = "response"
    """Whether it is a user's prompt or a model's response."""
    tenant: TenantName = "default"
    """Whose text it is (reported in the verdict)."""


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


def create_app(
    evaluator: Evaluator,
    metrics: GuardianMetrics,
    ready: Callable[[], bool],
    *,
    inline_max_chars: int = 20_000,
) -> FastAPI:
    """The guardian's FastAPI app (no I/O of its own besides answering)."""
    app = FastAPI(title="LLM Guardian Cluster guardian", docs_url="/docs", redoc_url=None)
    app.add_exception_handler(RequestValidationError, _validation_error)
    add_ops_routes(app, metrics.registry, ready)

    @app.post("/v1/guard/check")
    async def check(body: CheckRequest) -> JSONResponse:
        request_id = f"check-{uuid.uuid4().hex}"

        def judge() -> Evaluation:
            return evaluator.evaluate(body.text, kind=body.kind, request_id=request_id, tenant=body.tenant)

        # Regex detectors take microseconds on ordinary texts; only long ones go to a thread so
        # that one huge text cannot stall every other request on the loop.
        evaluation = await asyncio.to_thread(judge) if len(body.text) > inline_max_chars else judge()
        metrics.observe(evaluation, "api")
        return JSONResponse(evaluation.verdict.model_dump(mode="json"))

    return app
