"""The request pipeline against the EngineClient interface (an in-memory engine that answers at
once: the pipeline depends only on the interface; the Kafka engine has its own tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from shared.records import (
    CacheStatus,
    ErrorCode,
    ErrorInfo,
    FinishReason,
    GenerationRequest,
    GuardianVerdict,
    GuardMode,
    ReplyEvent,
    ReplyKind,
    TokenLogprob,
    Usage,
    VerdictAction,
)

from services.gateway.admission import InflightLimiter
from services.gateway.engine_client import EngineClient, ModelCard
from services.gateway.errors import ModelNotFoundError, ReplyError, TooManyRequestsError
from services.gateway.metrics import GatewayMetrics
from services.gateway.request_pipeline import GenerationCall, RequestPipeline
from services.gateway.request_translation import translate_completion
from services.gateway.openai_protocol import CompletionRequest
from services.gateway.settings import GatewaySettings
from services.gateway.tenants import Tenant


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
            yield ReplyEvent(
                request_id=request.id, kind=ReplyKind.DELTA, seq=seq, text="", logprobs=(lp,), token_ids=(seq,),
                prompt_token_ids=(7, 8) if seq == 0 else (),
            )
        yield ReplyEvent(
            request_id=request.id, kind=ReplyKind.FINAL, seq=2, text="ab", finish_reason=FinishReason.STOP,
            usage=Usage(prompt_tokens=2, completion_tokens=2),
        )


async def test_the_whole_answer_gathers_what_the_deltas_carry_where_asked() -> None:
    pipeline, _engine, _metrics = make(GatewaySettings(gateway_max_inflight=2))
    pipeline.engine = LogprobEngine()
    body = CompletionRequest.model_validate({"prompt": "p", "logprobs": 0, "return_token_ids": True})
    asked = translate_completion(body, GatewaySettings())
    call = await pipeline.submit(asked, request_id="cmpl-6", endpoint="completions", started=time.monotonic())
    result = await call.whole()
    await call.close("ok")
    assert result.final.text == "ab" and [lp.token for lp in result.logprobs or ()] == ["a", "b"]
    assert (result.token_ids, result.prompt_token_ids) == ([0, 1], (7, 8))
    plain = await pipeline.submit(translated(), request_id="cmpl-7", endpoint="completions", started=time.monotonic())
    unasked = await plain.whole()
    await plain.close("ok")
    # Not asked for: nothing is gathered (whatever the events carry).
    assert (unasked.logprobs, unasked.token_ids, unasked.prompt_token_ids) == (None, None, None)


# ---- several choices (n > 1) -------------------------------------------------------------------


class ChoicesEngine(InMemoryEngine):
    """Answers each child on its own: `hold` never answers; `fail-<i>` fails choice i at once and
    holds the others; anything else is answered with a text and usage of its own per choice."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned: list[str] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[ReplyEvent]:
        self.submitted.append(request)
        index = int(request.id.rsplit(".", 1)[1]) if "." in request.id else 0
        prompt = request.prompt or ""
        finished = False  # as KafkaEngineClient: closed after its terminal event is no cancellation
        try:
            if prompt == f"fail-{index}":
                error = ErrorInfo(code=ErrorCode.WORKER_FAILED, message="x")
                finished = True
                yield ReplyEvent(request_id=request.id, kind=ReplyKind.ERROR, seq=0, error=error)
                return
            if prompt == "hold" or prompt.startswith("fail-"):
                await asyncio.Event().wait()
            finished = True
            yield ReplyEvent(
                request_id=request.id,
                kind=ReplyKind.FINAL,
                seq=0,
                text=f"choice {index}",
                # The last choice runs out of tokens: each choice has its own finish reason.
                finish_reason=FinishReason.LENGTH if index == 2 else FinishReason.STOP,
                usage=Usage(prompt_tokens=2, completion_tokens=index + 1),
            )
        except (asyncio.CancelledError, GeneratorExit):
            if not finished:
                self.abandoned.append(request.id)  # a real engine client sends a Cancel here
            raise


class CountingRateLimiter:
    """Records the tokens each request takes up front and the usage it is reconciled with."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.reconciled: list[int | None] = []

    async def acquire(self, tenant: object, tokens: int) -> CountingRateLimiter:
        self.taken.append(tokens)
        return self

    async def release(self, used_tokens: int | None) -> None:
        self.reconciled.append(used_tokens)


def choices_pipeline(**settings: object) -> tuple[RequestPipeline, ChoicesEngine, CountingRateLimiter]:
    pipeline, _engine, _metrics = make(GatewaySettings(gateway_max_inflight=1, **settings))
    pipeline.engine = engine = ChoicesEngine()
    pipeline.rate_limiter = limiter = CountingRateLimiter()  # type: ignore[assignment]
    return pipeline, engine, limiter


def several(prompt: str | list[str] = "hi", n: int = 3, **body: object):
    return translate_completion(
        CompletionRequest.model_validate({"prompt": prompt, "n": n, "max_tokens": 10, **body}), GatewaySettings()
    )


async def test_choices_are_admitted_once_and_fan_out() -> None:
    pipeline, engine, limiter = choices_pipeline()
    call = await pipeline.submit_choices(
        several(seed=5), request_id="cmpl-8", endpoint="completions", started=time.monotonic()
    )
    assert pipeline.limiter.inflight == 1  # one permit for the whole request (the bound is 1)
    results = await call.results()
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.final.text for r in results] == ["choice 0", "choice 1", "choice 2"]
    assert [r.final.finish_reason for r in results] == [FinishReason.STOP, FinishReason.STOP, FinishReason.LENGTH]
    assert call.usage() == Usage(prompt_tokens=2, completion_tokens=1 + 2 + 3)
    assert [r.id for r in engine.submitted] == ["cmpl-8.0", "cmpl-8.1", "cmpl-8.2"]
    assert [r.params.seed for r in engine.submitted] == [5, 6, 7]
    await call.close("ok")
    assert pipeline.limiter.inflight == 0 and engine.abandoned == []
    # Tokens up front: the estimate times n (prompt "hi" = 1, max_tokens 10); reconciled with
    # what the cluster computed for every choice.
    assert limiter.taken == [(1 + 10) * 3]
    assert limiter.reconciled == [(2 + 1) + (2 + 2) + (2 + 3)]


async def test_several_prompts_are_admitted_once_with_every_prompts_estimate() -> None:
    pipeline, engine, limiter = choices_pipeline()
    call = await pipeline.submit_choices(
        several(["hi", "a longer prompt"], n=2), request_id="cmpl-11", endpoint="completions", started=time.monotonic()
    )
    results = await call.results()
    await call.close("ok")
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.prompt for r in engine.submitted] == ["hi", "hi", "a longer prompt", "a longer prompt"]
    # Two prompts of 2 tokens each (the fake engine's count), four choices of 1 to 4 tokens.
    assert call.usage() == Usage(prompt_tokens=4, completion_tokens=1 + 2 + 3 + 4)
    # Up front: each prompt's estimate ("hi" 1, "a longer prompt" 4 tokens, max_tokens 10), n each.
    assert limiter.taken == [((1 + 10) + (4 + 10)) * 2]


async def test_a_failing_choice_fails_the_request_and_its_siblings_are_cancelled() -> None:
    pipeline, engine, limiter = choices_pipeline()
    call = await pipeline.submit_choices(
        several("fail-1"), request_id="cmpl-9", endpoint="completions", started=time.monotonic()
    )
    with pytest.raises(ReplyError) as failed:
        await call.results()
    assert failed.value.status == 502
    await call.close(failed.value.outcome)
    assert sorted(engine.abandoned) == ["cmpl-9.0", "cmpl-9.2"]
    assert pipeline.limiter.inflight == 0
    assert limiter.reconciled == [None]  # unfinished choices: the up-front count stays


async def test_closing_a_call_of_several_choices_cancels_every_choice() -> None:
    pipeline, engine, _limiter = choices_pipeline()
    call = await pipeline.submit_choices(
        several("hold", stream=True), request_id="cmpl-10", endpoint="completions", started=time.monotonic()
    )
    waiting = asyncio.ensure_future(call.next_event())
    await asyncio.sleep(0.01)
    waiting.cancel()  # the client went away
    await asyncio.gather(waiting, return_exceptions=True)
    await call.close("disconnected")
    assert sorted(engine.abandoned) == ["cmpl-10.0", "cmpl-10.1", "cmpl-10.2"]
    assert pipeline.limiter.inflight == 0


class RefusingCache:
    """A response cache that must not be asked."""

    async def lookup(self, request: GenerationRequest, policy: object) -> object:
        raise AssertionError("requests of several choices bypass the caches")


async def test_several_choices_bypass_the_caches() -> None:
    pipeline, engine, _limiter = choices_pipeline()
    pipeline.cache = RefusingCache()  # type: ignore[assignment]
    call = await pipeline.submit_choices(
        several(temperature=0), request_id="cmpl-11", endpoint="completions", started=time.monotonic()
    )
    assert call.cache_status is CacheStatus.BYPASS
    assert len(await call.results()) == 3
    await call.close("ok")


class RedactingGuardian:
    """Redacts every answer; records which request each check was for."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    async def check(self, text: str, *, kind: str, tenant: str, request_id: str) -> GuardianVerdict:
        self.checked.append(request_id)
        return GuardianVerdict(
            request_id=request_id, tenant=tenant, action=VerdictAction.REDACT, redacted_text=f"[{text}]"
        )


async def test_in_blocking_mode_each_choice_is_judged_on_its_own() -> None:
    pipeline, _engine, _limiter = choices_pipeline()
    pipeline.guardian = guardian = RedactingGuardian()  # type: ignore[assignment]
    tenant = Tenant(name="bank", guard_mode=GuardMode.BLOCKING)
    call = await pipeline.submit_choices(
        several(), request_id="cmpl-12", endpoint="completions", started=time.monotonic(), tenant=tenant
    )
    results = await call.results()
    await call.close("ok")
    assert sorted(guardian.checked) == ["cmpl-12.0", "cmpl-12.1", "cmpl-12.2"]
    assert [r.final.text for r in results] == ["[choice 0]", "[choice 1]", "[choice 2]"]


async def test_one_choice_takes_the_single_choice_path() -> None:
    pipeline, engine, limiter = choices_pipeline()
    engine_calls = len(engine.submitted)
    call = await pipeline.submit(several(n=1), request_id="cmpl-13", endpoint="completions", started=time.monotonic())
    assert isinstance(call, GenerationCall)
    assert (await call.final()).text == "choice 0"
    await call.close("ok")
    # One request, under the client's own id (no child ids for n = 1), estimate not multiplied.
    assert [r.id for r in engine.submitted[engine_calls:]] == ["cmpl-13"]
    assert limiter.taken == [1 + 10]
