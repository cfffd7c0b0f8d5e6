"""The engine client that talks to the cluster over Kafka.

A request is written to `<prefix>.requests.<priority>` keyed by its id, with `reply_to` set to this
instance's reply topic; its events come back through the :class:`ReplyRouter`. The subscription is
made before the request is produced, so no reply can be missed. When the deadline passes, or the
caller stops listening early (a client disconnected), a Cancel record tells the batchers to stop.
With a doorbell ringer (shared/doorbell.py), each request is announced to the batchers once the
broker has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiokafka import AIOKafkaProducer

from shared.doorbell import DoorbellRinger, send_announced
from shared.records import Cancel, GenerationRequest, ReplyEvent
from shared.topics import Topics

from services.gateway.engine_client import EngineClient, ModelCard
from services.gateway.errors import EngineUnavailableError, GatewayTimeoutError
from services.gateway.model_catalog import ModelCatalog
from services.gateway.reply_router import ReplyRouter

__all__ = ["KafkaEngineClient"]

log = logging.getLogger(__name__)


class KafkaEngineClient(EngineClient):
    """Requests out through Kafka, events back through the reply router."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        router: ReplyRouter,
        catalog: ModelCatalog,
        topics: Topics,
        *,
        default_timeout_s: float,
        on_cancel: Callable[[str], None] | None = None,
        ringer: DoorbellRinger | None = None,
    ) -> None:
        """`producer` and `router` are started and stopped by the caller; `on_cancel` is told the
        reason of every Cancel sent (for metrics)."""
        self._producer = producer
        self._router = router
        self._catalog = catalog
        self._topics = topics
        self._default_timeout_s = default_timeout_s
        self._on_cancel = on_cancel or (lambda _reason: None)
        self._ringer = ringer
        self._background: set[asyncio.Task[None]] = set()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[ReplyEvent]:
        request = request.model_copy(update={"reply_to": self._router.topic})
        deadline = request.deadline if request.deadline is not None else time.time() + self._default_timeout_s
        payload = request.to_bytes()
        subscription = self._router.subscribe(request.id)
        finished = False
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.time())):
                    # Announced once acknowledged: batchers with the doorbell are parked until it rings.
                    topic = self._topics.requests(request.priority)
                    await (await send_announced(self._producer, self._ringer, topic, payload, request.id))
            except asyncio.CancelledError:
                raise  # handled below: the caller went away while the request was being sent
            except TimeoutError:
                # The deadline passed while Kafka was still taking the request: it may have been
                # written, so the batchers are asked to drop it.
                finished = True
                self._cancel_soon(request.id, "timeout")
                raise GatewayTimeoutError("The request could not be queued before its deadline.") from None
            except Exception as exc:
                # Safe: the client is told (503). The record may still have been written before
                # the failure was reported, so the batchers are asked to drop it.
                self._cancel_soon(request.id, "submit_failed")
                raise EngineUnavailableError(f"The request could not be queued: {exc}") from exc
            while True:
                remaining = deadline - time.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        event = await subscription.next_event()
                except TimeoutError:
                    # The deadline passed: stop the work in the cluster and tell the caller.
                    finished = True
                    self._cancel_soon(request.id, "timeout")
                    raise GatewayTimeoutError(
                        "The request did not complete before its deadline and was cancelled."
                    ) from None
                if event.terminal:
                    finished = True
                yield event
                if finished:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            # The caller stopped listening (client gone, or its own cancellation): stop the work.
            if not finished:
                self._cancel_soon(request.id, "client_disconnected")
            raise
        finally:
            self._router.unsubscribe(request.id)

    async def cancel(self, request_id: str, reason: str) -> None:
        record = Cancel(request_id=request_id, reason=reason)
        await self._producer.send_and_wait(self._topics.cancellations, record.to_bytes(), key=request_id)
        self._on_cancel(reason)
        log.info("cancelled a request", extra={"request_id": request_id, "reason": reason})

    def _cancel_soon(self, request_id: str, reason: str) -> None:
        """Send a Cancel without making the caller wait (it may be unwinding a cancellation)."""
        task = asyncio.get_running_loop().create_task(self._cancel_logged(request_id, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_logged(self, request_id: str, reason: str) -> None:
        try:
            await self.cancel(request_id, reason)
        except Exception:
            # Safe: the batcher still stops at the request's deadline; this only frees it sooner.
            log.warning("could not publish a Cancel", exc_info=True, extra={"request_id": request_id})

    async def drain(self) -> None:
        """Wait for Cancel records still being sent (at shutdown, before the producer stops)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def models(self, *, refresh: bool = False) -> list[ModelCard]:
        return await self._catalog.models(max_age_s=0 if refresh else None)

    async def resolve_model(self, requested: str | None) -> str:
        return await self._catalog.resolve(requested)

    def ready(self) -> bool:
        return self._router.ready()
