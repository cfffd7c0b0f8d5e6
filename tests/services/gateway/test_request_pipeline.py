"""The request pipeline against the EngineClient interface (an in-memory engine that answers at
once: the pipeline depends only on the interface; the Kafka engine has its own tests)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from shared.records import (
    ErrorCode,
    ErrorInfo,
    FinishReason,
    GenerationRequest,
    ReplyEvent,
    ReplyKind,
    TokenLogprob,
    Usage,
)

from services.gateway.admission import InflightLimiter
from services.gateway.engine_client import EngineClient, ModelCard
from services.gateway.errors import ModelNotFoundError, ReplyError, TooManyRequestsError
from services.gateway.metrics import GatewayMetrics
from services.gateway.request_pipeline import RequestPipeline
from services.gateway.request_translation import translate_completion
from services.gateway.openai_protocol import CompletionRequest
from services.gateway.settings import GatewaySettings


class InMemoryEngine(EngineClient):
    def __init__(self) -> None:
        self.submitted: list[GenerationRequest] = []
        self.closed: list[str] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[ReplyEvent]:
        self.submitted.append(request)
        try:
            yield ReplyEvent(request_id=request.id, kind=ReplyKind.DELTA, seq=0, text="a")
            if request.prompt == "fail":
                error = ErrorInfo(code=ErrorCode.WORKER_FAILED, message="x")
                yield ReplyEvent(request_id=request.id, kind=ReplyKind.ERROR, seq=1, error=error)
                return
            yield ReplyEvent(
                request_id=request.id,
                kind=ReplyKind.FINAL,
                seq=1,
                text="a",
                finish_reason=FinishReason.STOP,
                usage=Usage(prompt_tokens=2, completion_tokens=1),
            )
        finally:
            self.closed.append(request.id)

    async def cancel(self, request_id: str, reason: str) -> None:
        raise AssertionError("not used")

    async def models(self, *, refresh: bool = False) -> list[ModelCard]:
        return [ModelCard(name="m", workers=1, first_seen=0.0)]

    async def resolve_model(self, requested: str | None) -> str:
        if requested not in (None, "m"):
            raise ModelNotFoundError("no")
        return "m"

    def ready(self) -> bool:
        return True


def make(settings: GatewaySettings | None = None) -> tuple[RequestPipeline, InMemoryEngine, GatewayMetrics]:
    settings = settings or GatewaySettings(gateway_max_inflight=1, gateway_request_timeout_s=60)
    engine = InMemoryEngine()
    metrics = GatewayMetrics(CollectorRegistry(), instance="t", max_inflight=settings.gateway_max_inflight)
    limiter = InflightLimiter(settings.gateway_max_inflight, on_change=metrics.set_inflight)
    return RequestPipeline(engine, limiter, metrics, settings), engine, metrics


def translated(prompt: str = "hi", model: str | None = None):
    return translate_completion(CompletionRequest.model_validate({"prompt": prompt, "model": model}), GatewaySettings())


async def test_submit_final_and_close() -> None:
    pipeline, engine, metrics = make()
    call = await pipeline.submit(translated(), request_id="cmpl-1", endpoint="completions", started=time.monotonic(), timeout_s=5)
    assert pipeline.limiter.inflight == 1
    final = await call.final()
    assert final.text == "a" and call.model == "m" and call.request_id == "cmpl-1"
    (request,) = engine.submitted
    assert request.deadline is not None and request.deadline - request.created_at <= 5.1  # the shorter budget wins
    await call.close("ok")
    await call.close("internal")  # only the first close counts
    assert pipeline.limiter.inflight == 0
    assert engine.closed == ["cmpl-1"]
    assert metrics.snapshot().values["requests_ok_total"] == 1 and metrics.snapshot().values["requests_error_total"] == 0
    assert metrics.completion_tokens._value.get() == 1


async def test_error_event_raises_reply_error() -> None:
    pipeline, _engine, _metrics = make()
    call = await pipeline.submit(translated("fail"), request_id="cmpl-2", endpoint="completions", started=time.monotonic())
    with pytest.raises(ReplyError) as failed:
        await call.final()
    assert failed.value.status == 502
    await call.close(failed.value.outcome)
    assert pipeline.limiter.inflight == 0


async def test_refusals_release_the_permit() -> None:
    pipeline, engine, _metrics = make()
    with pytest.raises(ModelNotFoundError):
        await pipeline.submit(translated(model="x"), request_id="cmpl-3", endpoint="completions", started=time.monotonic())
    assert pipeline.limiter.inflight == 0 and engine.submitted == []
    held = await pipeline.submit(translated(), request_id="cmpl-4", endpoint="completions", started=time.monotonic())
    with pytest.raises(TooManyRequestsError):
        await pipeline.submit(translated(), request_id="cmpl-5", endpoint="completions", started=time.monotonic())
    await held.close("disconnected")
    assert pipeline.limiter.inflight == 0


class LogprobEngine(InMemoryEngine):
    """Answers as the batcher answers a request for log probabilities: deltas of empty text that
    carry them, just before the final event."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[ReplyEvent]:
        self.submitted.append(request)
        for seq, token in enumerate(("a", "b")):
            lp = TokenLogprob(token_id=seq, token=token, logprob=-0.5)
            yield ReplyEvent(request_id=request.id, kind=ReplyKind.DELTA, seq=seq, text="", logprobs=(lp,))
        yield ReplyEvent(
            request_id=request.id, kind=ReplyKind.FINAL, seq=2, text="ab", finish_reason=FinishReason.STOP,
            usage=Usage(prompt_tokens=2, completion_tokens=2),
        )


async def test_final_gathers_the_logprobs_of_the_deltas() -> None:
    pipeline, _engine, _metrics = make(GatewaySettings(gateway_max_inflight=2))
    pipeline.engine = LogprobEngine()
    asked = translate_completion(CompletionRequest.model_validate({"prompt": "p", "logprobs": 0}), GatewaySettings())
    call = await pipeline.submit(asked, request_id="cmpl-6", endpoint="completions", started=time.monotonic())
    final = await call.final()
    await call.close("ok")
    assert final.text == "ab" and [lp.token for lp in call.logprobs or ()] == ["a", "b"]
    plain = await pipeline.submit(translated(), request_id="cmpl-7", endpoint="completions", started=time.monotonic())
    await plain.final()
    await plain.close("ok")
    assert plain.logprobs is None  # not asked for: nothing is gathered
