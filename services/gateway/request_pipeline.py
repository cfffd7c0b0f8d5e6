"""The path every request takes after translation, shared by the HTTP and gRPC APIs:
admission (in-flight bound) -> model resolution -> deadline -> submission to the engine client,
and the bookkeeping of its end (permit release, metrics).

This is where the later issue's tenants, rate limits and caches slot in: authentication decides the
tenant before translation, rate limits join admission, and a caching engine client wraps the Kafka
one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from shared.records import GenerationRequest, ReplyEvent, ReplyKind

from services.gateway.admission import InflightLimiter, Permit
from services.gateway.engine_client import EngineClient
from services.gateway.errors import ReplyError
from services.gateway.metrics import GatewayMetrics
from services.gateway.request_translation import TranslatedRequest
from services.gateway.settings import GatewaySettings

__all__ = ["GenerationCall", "RequestPipeline"]

log = logging.getLogger(__name__)


class GenerationCall:
    """One admitted request in progress: its events, and what happens when it ends."""

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
    ) -> None:
        self.request = request
        self.endpoint = endpoint
        self.include_usage = include_usage
        self.created = int(request.created_at)
        self._events = events
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

    async def next_event(self) -> ReplyEvent:
        """The next event (StopAsyncIteration after the terminal one)."""
        event = await anext(self._events)
        if event.kind is ReplyKind.DELTA and not self._first_delta_seen:
            self._first_delta_seen = True
            self._metrics.ttft.labels(endpoint=self.endpoint, priority=self.priority).observe(
                time.monotonic() - self._started
            )
        elif event.kind is ReplyKind.FINAL and event.usage is not None:
            self._metrics.completion_tokens.inc(event.usage.completion_tokens)
            self._metrics.prompt_tokens.inc(event.usage.prompt_tokens)
        return event

    async def final(self) -> ReplyEvent:
        """Wait for the final event (deltas are skipped); ReplyError if the request failed."""
        while True:
            event = await self.next_event()
            if event.kind is ReplyKind.ERROR:
                assert event.error is not None
                raise ReplyError(event.error)
            if event.kind is ReplyKind.FINAL:
                return event

    async def close(self, outcome: str) -> None:
        """End the call: stop listening (which cancels unfinished work), free the permit, count it.
        Safe to call more than once; only the first outcome counts."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
        finally:
            self._permit.release()
            self._metrics.observe_request(self.endpoint, outcome, self.priority, time.monotonic() - self._started)


class RequestPipeline:
    """Admits, resolves and submits translated requests."""

    def __init__(
        self,
        engine: EngineClient,
        limiter: InflightLimiter,
        metrics: GatewayMetrics,
        settings: GatewaySettings,
    ) -> None:
        self.engine = engine
        self.limiter = limiter
        self.metrics = metrics
        self.settings = settings

    async def submit(
        self,
        translated: TranslatedRequest,
        *,
        request_id: str,
        endpoint: str,
        started: float,
        timeout_s: float | None = None,
    ) -> GenerationCall:
        """Admit the request and start it; the caller must `close()` the call it gets. Raises
        TooManyRequestsError, ModelNotFoundError, NoWorkersError, EngineUnavailableError."""
        permit = self.limiter.acquire()
        try:
            model = await self.engine.resolve_model(translated.requested_model)
            budget = self.settings.gateway_request_timeout_s
            if timeout_s is not None:
                budget = min(budget, timeout_s)
            request = translated.to_generation_request(
                request_id=request_id, model=model, deadline=time.time() + budget
            )
            events = self.engine.generate(request)
        except BaseException:
            # Refused or failed before a call exists: give the slot back, then report why.
            permit.release()
            raise
        log.info(
            "request admitted",
            extra={
                "endpoint": endpoint,
                "model": model,
                "priority": request.priority.value,
                "stream": request.stream,
                "max_new_tokens": request.params.max_new_tokens,
            },
        )
        return GenerationCall(
            request,
            endpoint=endpoint,
            include_usage=translated.include_usage,
            events=events,
            permit=permit,
            metrics=self.metrics,
            started=started,
        )

    def count_refused(self, endpoint: str, priority: str, outcome: str, started: float) -> None:
        """Count a request that failed before it became a call."""
        self.metrics.observe_request(endpoint, outcome, priority, time.monotonic() - started)
