"""The path every request takes after translation, shared by the HTTP and gRPC APIs:

authentication (API key -> tenant, before translation so the tenant's default priority applies)
-> in-flight bound -> request-topic lag bound -> model resolution -> priority cap and deadline ->
tenant rate limits (Redis, shared by replicas) -> caches (exact, then semantic) -> on a hit, a replay
of the cached answer (also published to the results topic); on a miss, submission to the engine
client, recording the answer into the caches when it comes. For tenants in blocking guard mode, the
answer (fresh or replayed) passes the guardian's synchronous check before any of it is let out, and
before it is recorded (blocking_guard.py). And the bookkeeping of the end: permit and tenant slot
release (tokens reconciled with the real usage), metrics.

A request of several choices (`n` > 1, or a completion request's list of prompts;
`submit_choices`, parallel_sampling.py) is admitted once, as a whole (its token estimate counts
every choice), bypasses the caches, and fans out into one child request per choice on the same
engine client, each judged on its own in blocking guard mode; its
:class:`ChoicesCall` merges their events. Requests of one choice (`submit`, :class:`GenerationCall`)
take the path above unchanged: no task or queue of the fan-out is made for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from shared.records import (
    CachePolicy,
    CacheStatus,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GuardMode,
    ReplyEvent,
    ReplyKind,
    Timings,
    Usage,
)

from services.gateway.admission import InflightLimiter, Permit
from services.gateway.backpressure import RequestLagMonitor
from services.gateway.blocking_guard import guarded_events
from services.gateway.cache_policy import policy_from_cache_control
from services.gateway.engine_client import EngineClient
from services.gateway.errors import GuardianUnavailableError, ReplyError
from services.gateway.guardian_client import GuardianClient
from services.gateway.metrics import GatewayMetrics
from services.gateway.parallel_sampling import (
    ChoiceEvent,
    ChoiceGatherer,
    ChoiceResult,
    ChoiceStreams,
    child_requests,
    summed_usage,
)
from services.gateway.rate_limits import RateLimiter, TenantSlot, estimate_tokens
from services.gateway.request_translation import TranslatedRequest
from services.gateway.response_cache import CacheLookup, ResponseCache
from services.gateway.settings import GatewaySettings
from services.gateway.tenants import OPEN_TENANT, Tenant, TenantDirectory, cap_priority

__all__ = ["ChoicesCall", "GenerationCall", "RequestPipeline"]

log = logging.getLogger(__name__)


class _Call:
    """What every admitted request has, however many choices it makes: its record, the permit and
    tenant slot it holds, and the bookkeeping of its end (`close`)."""

    def __init__(
        self,
        request: GenerationRequest,
        *,
        endpoint: str,
        include_usage: bool,
        permit: Permit,
        metrics: GatewayMetrics,
        started: float,
        cache_status: CacheStatus = CacheStatus.MISS,
        slot: TenantSlot | None = None,
    ) -> None:
        self.request = request
        self.cache_status = cache_status
        """How the caches were involved (the `X-LGC-Cache` header)."""
        self._slot = slot
        self._used_tokens: int | None = None
        """Tokens the request really used, once known (None: keep the up-front count)."""
        self.endpoint = endpoint
        self.include_usage = include_usage
        self.created = int(request.created_at)
        self._permit = permit
        self._metrics = metrics
        self._started = started
        self._first_delta_seen = False
        self._closed = False

    @property
    def request_id(self) -> str:
        return self.request.id

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def priority(self) -> str:
        return self.request.priority.value

    def _note_first_delta(self) -> None:
        """Time to first token; called for the first delta of a stream only (a whole answer's
        deltas, its log probabilities, come just before its end)."""
        self._first_delta_seen = True
        self._metrics.ttft.labels(endpoint=self.endpoint, priority=self.priority).observe(
            time.monotonic() - self._started
        )

    def _count_usage(self, usage: Usage) -> None:
        """Token metrics count what the cluster generated (a replayed cached answer cost nothing)."""
        if self.cache_status in (CacheStatus.MISS, CacheStatus.BYPASS):
            self._metrics.completion_tokens.inc(usage.completion_tokens)
            self._metrics.prompt_tokens.inc(usage.prompt_tokens)

    async def _stop(self) -> None:
        """Stop listening to the cluster (which cancels unfinished work)."""
        raise NotImplementedError

    async def close(self, outcome: str) -> None:
        """End the call: stop listening (which cancels unfinished work), free the permit, count it.
        Safe to call more than once; only the first outcome counts."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stop()
        finally:
            self._permit.release()
            if self._slot is not None:
                await self._slot.release(self._used_tokens)
            self._metrics.observe_request(self.endpoint, outcome, self.priority, time.monotonic() - self._started)


class GenerationCall(_Call):
    """One admitted request of one choice in progress: its events, and what happens when it ends."""

    def __init__(
        self,
        request: GenerationRequest,
        *,
        endpoint: str,
        include_usage: bool,
        events: AsyncIterator[ReplyEvent],
        permit: Permit,
        metrics: GatewayMetrics,
        started: float,
        cache_status: CacheStatus = CacheStatus.MISS,
        slot: TenantSlot | None = None,
    ) -> None:
        super().__init__(
            request,
            endpoint=endpoint,
            include_usage=include_usage,
            permit=permit,
            metrics=metrics,
            started=started,
            cache_status=cache_status,
            slot=slot,
        )
        self._events = events
        self._gathered = ChoiceGatherer(request.params)
        """What `final` gathers from the deltas besides their text (log probabilities, token ids,
        ...: they never come on the final event)."""

    async def next_event(self) -> ReplyEvent:
        """The next event (StopAsyncIteration after the terminal one)."""
        event = await anext(self._events)
        if _first_token(event) and self.request.stream and not self._first_delta_seen:
            self._note_first_delta()
        elif event.kind is ReplyKind.FINAL and event.usage is not None:
            self._used_tokens = event.usage.total_tokens
            self._count_usage(event.usage)
        return event

    async def whole(self) -> ChoiceResult:
        """Wait for the whole answer: its final event with what its deltas carried besides their
        text (`ChoiceGatherer`); ReplyError if the request failed."""
        return self._gathered.result(0, await self.final())

    async def final(self) -> ReplyEvent:
        """Wait for the final event; ReplyError if the request failed. Deltas are skipped but for
        what they carry besides their text, gathered for `whole`."""
        while True:
            event = await self.next_event()
            if event.kind is ReplyKind.DELTA:
                self._gathered.add(event)
            elif event.kind is ReplyKind.ERROR:
                assert event.error is not None
                raise ReplyError(event.error)
            elif event.kind is ReplyKind.FINAL:
                return event

    async def _stop(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]


class ChoicesCall(_Call):
    """One admitted request of several choices in progress (parallel_sampling.py): its children's
    events, merged, and what happens when it ends. Closing it cancels every unfinished choice."""

    def __init__(
        self,
        request: GenerationRequest,
        *,
        children: tuple[GenerationRequest, ...],
        per_prompt: int,
        endpoint: str,
        include_usage: bool,
        choices: ChoiceStreams,
        permit: Permit,
        metrics: GatewayMetrics,
        started: float,
        slot: TenantSlot | None = None,
    ) -> None:
        super().__init__(
            request,
            endpoint=endpoint,
            include_usage=include_usage,
            permit=permit,
            metrics=metrics,
            started=started,
            cache_status=CacheStatus.BYPASS,
            slot=slot,
        )
        self.children = children
        """The requests that make the choices, choice i at index i (ids `<request id>.<i>`)."""
        self.per_prompt = per_prompt
        """The request's `n`: choices `i * n` to `i * n + n - 1` continue prompt `i`."""
        self._choices = choices
        self._finals: dict[int, ReplyEvent] = {}

    @property
    def n(self) -> int:
        """How many choices (`n` for each prompt)."""
        return len(self.children)

    async def next_event(self) -> ChoiceEvent:
        """The next event of any choice, in arrival order. Raises what a choice's stream raised
        (GatewayTimeoutError, ...); error events are returned, as GenerationCall does."""
        item = await self._choices.next()
        event = item.event
        if _first_token(event) and self.request.stream and not self._first_delta_seen:
            self._note_first_delta()
        elif event.kind is ReplyKind.FINAL:
            self._finals[item.index] = event
            if event.usage is not None:
                self._count_usage(event.usage)
            if len(self._finals) == self.n and all(f.usage is not None for f in self._finals.values()):
                # What the cluster computed: every choice's prompt and completion.
                self._used_tokens = sum(f.usage.total_tokens for f in self._finals.values() if f.usage is not None)
        return item

    @property
    def finished(self) -> int:
        """How many choices have their final event."""
        return len(self._finals)

    def usage(self) -> Usage:
        """The answer's usage so far (parallel_sampling.summed_usage): each prompt once, every
        finished choice's completion tokens summed."""
        return summed_usage(self._finals, self.per_prompt)

    async def results(self) -> list[ChoiceResult]:
        """Wait for every choice's final event; ReplyError as soon as one fails (the caller closes
        the call, which cancels the others). Sorted by index, each with what its deltas carried
        besides their text (`ChoiceGatherer`)."""
        gathered = [ChoiceGatherer(self.request.params) for _ in range(self.n)]
        while self.finished < self.n:
            item = await self.next_event()
            event = item.event
            if event.kind is ReplyKind.DELTA:
                gathered[item.index].add(event)
            elif event.kind is ReplyKind.ERROR:
                assert event.error is not None
                raise ReplyError(event.error)
        return [gathered[index].result(index, self._finals[index]) for index in range(self.n)]

    async def _stop(self) -> None:
        await self._choices.aclose()


def _first_token(event: ReplyEvent) -> bool:
    """Whether `event` may be an answer's first token: a delta, but not the decoding of a prompt of
    token ids alone, which a worker sends before it computes anything."""
    return event.kind is ReplyKind.DELTA and (event.prompt_text is None or bool(event.text))


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A request past admission: what it holds until its call is closed."""

    request: GenerationRequest
    """The record (id = the client's request id), priority capped, cache policy and guard set."""
    tenant: Tenant
    policy: CachePolicy
    permit: Permit
    slot: TenantSlot | None
    choices: int
    """The request's `n`."""

    async def release(self) -> None:
        """Give back what was taken (nothing was used)."""
        self.permit.release()
        if self.slot is not None:
            await self.slot.release(0)


class RequestPipeline:
    """Authenticates, admits, resolves and submits translated requests (or answers from a cache)."""

    def __init__(
        self,
        engine: EngineClient,
        limiter: InflightLimiter,
        metrics: GatewayMetrics,
        settings: GatewaySettings,
        *,
        tenants: TenantDirectory | None = None,
        rate_limiter: RateLimiter | None = None,
        lag_monitor: RequestLagMonitor | None = None,
        cache: ResponseCache | None = None,
        publish_result: Callable[[GenerationResult], Awaitable[None]] | None = None,
        guardian: GuardianClient | None = None,
    ) -> None:
        self.engine = engine
        self.limiter = limiter
        self.metrics = metrics
        self.settings = settings
        self.tenants = tenants
        self.rate_limiter = rate_limiter
        self.lag_monitor = lag_monitor
        self.cache = cache
        self._publish_result = publish_result
        self.guardian = guardian
        self._background: set[asyncio.Task[None]] = set()
        self.open_tenant = self.open_tenant_of(settings)

    @staticmethod
    def open_tenant_of(settings: GatewaySettings) -> Tenant:
        """The tenant of every request in open mode (limits from the `gateway_open_tenant_*` settings)."""
        return Tenant(
            name=OPEN_TENANT,
            default_priority=settings.gateway_default_priority,
            requests_per_min=settings.gateway_open_tenant_requests_per_min,
            tokens_per_min=settings.gateway_open_tenant_tokens_per_min,
            max_concurrent=settings.gateway_open_tenant_max_concurrent,
            guard_mode=settings.gateway_open_tenant_guard_mode,
        )

    async def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of an `Authorization` value (UnauthorizedError when keys are required and it
        is missing or unknown)."""
        if self.tenants is None:
            return self.open_tenant
        return await self.tenants.authenticate(authorization)

    async def submit(
        self,
        translated: TranslatedRequest,
        *,
        request_id: str,
        endpoint: str,
        started: float,
        timeout_s: float | None = None,
        tenant: Tenant | None = None,
        cache_control: str | None = None,
    ) -> GenerationCall:
        """Admit a request of one choice and start it; the caller must `close()` the call it gets.
        Raises TooManyRequestsError, ModelNotFoundError, NoWorkersError, EngineUnavailableError."""
        assert translated.choice_count == 1, "requests of several choices go through submit_choices"
        admitted = await self._admit(
            translated, request_id=request_id, timeout_s=timeout_s, tenant=tenant, cache_control=cache_control
        )
        request = admitted.request
        try:
            lookup = CacheLookup(CacheStatus.BYPASS)
            if self.cache is not None and self.settings.gateway_cache_enabled:
                lookup = await self.cache.lookup(request, admitted.policy)
            if lookup.answer is not None:
                events = self._guarded(self._replay(request, lookup, started), request)
            else:
                events = self._guarded(self.engine.generate(request), request)
                if lookup.store:
                    events = self._recording(events, request, lookup)
        except BaseException:
            # Failed before a call exists: give the slots back, then report why.
            await admitted.release()
            raise
        self._log_admitted(admitted, endpoint, lookup.status)
        return GenerationCall(
            request,
            endpoint=endpoint,
            include_usage=translated.include_usage,
            events=events,
            permit=admitted.permit,
            metrics=self.metrics,
            started=started,
            cache_status=lookup.status,
            slot=admitted.slot,
        )

    async def submit_choices(
        self,
        translated: TranslatedRequest,
        *,
        request_id: str,
        endpoint: str,
        started: float,
        timeout_s: float | None = None,
        tenant: Tenant | None = None,
        cache_control: str | None = None,
    ) -> ChoicesCall:
        """Admit a request of several choices (`translated.choice_count` > 1) and start its children
        (parallel_sampling.py); the caller must `close()` the call it gets. Admission (in-flight
        bound, lag, rate limits with the token estimate of every choice) is the whole request's, once.
        The caches are bypassed: a cached answer is one choice, and storing one of the choices
        would replay one sample n times. In blocking guard mode each choice is judged on its own."""
        admitted = await self._admit(
            translated, request_id=request_id, timeout_s=timeout_s, tenant=tenant, cache_control=cache_control
        )
        request = admitted.request
        children = child_requests(request, translated.n, translated.prompts)
        choices = ChoiceStreams([self._guarded(self.engine.generate(child), child) for child in children])
        self._log_admitted(admitted, endpoint, CacheStatus.BYPASS)
        return ChoicesCall(
            request,
            children=children,
            per_prompt=translated.n,
            endpoint=endpoint,
            include_usage=translated.include_usage,
            choices=choices,
            permit=admitted.permit,
            metrics=self.metrics,
            started=started,
            slot=admitted.slot,
        )

    async def _admit(
        self,
        translated: TranslatedRequest,
        *,
        request_id: str,
        timeout_s: float | None,
        tenant: Tenant | None,
        cache_control: str | None,
    ) -> _Admitted:
        """In-flight bound -> request lag -> model -> priority cap, cache policy, guard mode and
        deadline -> tenant rate limits, once per client request however many choices it makes."""
        tenant = tenant or self.open_tenant
        permit = self.limiter.acquire()
        slot: TenantSlot | None = None
        try:
            if self.lag_monitor is not None:
                await self.lag_monitor.check()
            model = await self.engine.resolve_model(translated.requested_model)
            budget = self.settings.gateway_request_timeout_s
            if timeout_s is not None:
                budget = min(budget, timeout_s)
            request = translated.to_generation_request(
                request_id=request_id, model=model, deadline=time.time() + budget, tenant=tenant.name
            )
            priority = cap_priority(request.priority, tenant.max_priority)
            policy = policy_from_cache_control(cache_control)
            request = request.model_copy(update={"priority": priority, "cache": policy, "guard": tenant.guard_mode})
            if request.guard is GuardMode.BLOCKING and self.guardian is None:
                raise GuardianUnavailableError("This tenant's answers must be judged, and no guardian is configured.")
            if self.rate_limiter is not None:
                prompts = translated.prompts or [
                    request.prompt_token_ids
                    or (request.prompt or "") + "".join(m.content for m in request.messages or ())
                ]
                # Each choice is a whole request in the cluster: its prompt and its completion.
                max_new = request.params.max_new_tokens
                cost = translated.n * sum(
                    estimate_tokens(0, max_new, prompt_token_ids=len(prompt))
                    if isinstance(prompt, tuple)
                    else estimate_tokens(len(prompt), max_new)
                    for prompt in prompts
                )
                slot = await self.rate_limiter.acquire(tenant, cost)
        except BaseException:
            # Refused or failed before a call exists: give the slots back, then report why.
            permit.release()
            if slot is not None:
                await slot.release(0)
            raise
        return _Admitted(
            request=request, tenant=tenant, policy=policy, permit=permit, slot=slot, choices=translated.choice_count
        )

    def _log_admitted(self, admitted: _Admitted, endpoint: str, cache_status: CacheStatus) -> None:
        request = admitted.request
        log.info(
            "request admitted",
            extra={
                "endpoint": endpoint,
                "model": request.model,
                "tenant": admitted.tenant.name,
                "key_id": admitted.tenant.key_id,
                "priority": request.priority.value,
                "stream": request.stream,
                "max_new_tokens": request.params.max_new_tokens,
                "cache": cache_status.value,
                "choices": admitted.choices,
            },
        )

    def _guarded(self, events: AsyncIterator[ReplyEvent], request: GenerationRequest) -> AsyncIterator[ReplyEvent]:
        """`events`, judged by the guardian before they leave when the tenant is in blocking mode."""
        if request.guard is not GuardMode.BLOCKING:
            return events
        assert self.guardian is not None
        return guarded_events(
            events,
            request,
            self.guardian,
            fail_open=self.settings.gateway_guard_fail_open,
            on_result=lambda result: self.metrics.guard_checks.labels(result=result).inc(),
        )

    async def _replay(self, request: GenerationRequest, lookup: CacheLookup, started: float) -> AsyncIterator[ReplyEvent]:
        """A cached answer as the cluster would have sent it (one delta when streaming, then the
        final event); also published to the results topic with its cache status."""
        answer = lookup.answer
        assert answer is not None
        self.metrics.cache_hits.labels(kind=lookup.status.value).inc()
        self._in_background(self._after_hit(request, lookup, started))
        seq = 0
        if request.stream and answer.text:
            yield ReplyEvent(request_id=request.id, kind=ReplyKind.DELTA, seq=0, text=answer.text, model=answer.model)
            seq = 1
        yield ReplyEvent(
            request_id=request.id,
            kind=ReplyKind.FINAL,
            seq=seq,
            text=answer.text,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            model=answer.model,
            worker_id="cache",
        )

    async def _after_hit(self, request: GenerationRequest, lookup: CacheLookup, started: float) -> None:
        assert self.cache is not None and lookup.answer is not None
        await self.cache.note_hit(lookup, request.id)
        if self._publish_result is None:
            return
        answer = lookup.answer
        result = GenerationResult(
            request_id=request.id,
            tenant=request.tenant,
            model=answer.model,
            priority=request.priority,
            prompt=request.prompt_as_text(),
            text=answer.text,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            timings=Timings(total_ms=(time.monotonic() - started) * 1000),
            worker_id="cache",
            cache_status=lookup.status,
            guard=request.guard,
        )
        try:
            await self._publish_result(result)
        except Exception:
            # Safe: the client has its answer; only the results stream misses this hit (logged).
            log.warning("could not publish a cache hit's result", exc_info=True, extra={"request_id": request.id})

    async def _recording(
        self, events: AsyncIterator[ReplyEvent], request: GenerationRequest, lookup: CacheLookup
    ) -> AsyncIterator[ReplyEvent]:
        """Pass events through; a complete final answer is stored in the caches (in the background,
        so the client never waits for it)."""
        assert self.cache is not None
        cache = self.cache
        try:
            async for event in events:
                if event.kind is ReplyKind.FINAL and event.finish_reason in (FinishReason.STOP, FinishReason.LENGTH):
                    self._in_background(cache.remember(lookup, request, event))
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for cache writes and hit publications still running (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def count_refused(self, endpoint: str, priority: str, outcome: str, started: float) -> None:
        """Count a request that failed before it became a call."""
        self.metrics.observe_request(endpoint, outcome, priority, time.monotonic() - started)
