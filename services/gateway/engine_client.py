"""What the gateway's APIs need from the cluster, as an abstract interface (as vLLM's OpenAI
frontend depends on an abstract engine client): the HTTP and gRPC layers never touch Kafka.

The Kafka implementation is :class:`services.gateway.kafka_engine_client.KafkaEngineClient`; the
caches of a later issue slot in as a client that wraps another one.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.records import GenerationRequest, ReplyEvent

__all__ = ["EngineClient", "ModelCard"]


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A model the cluster serves."""

    name: str
    """The name to put in requests."""
    workers: int
    """Registered workers serving it."""
    first_seen: float
    """When this gateway first saw it (Unix seconds)."""
    simulated: bool = False
    """Served only by simulated workers (no real model)."""


class EngineClient(abc.ABC):
    """Submits requests to the cluster and hands back their events."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[ReplyEvent]:
        """Submit `request` and yield its ReplyEvents in order, without duplicates, ending with the
        terminal one (`final` or `error`). Raises GatewayTimeoutError when the request's deadline
        passes first, EngineUnavailableError when it cannot be submitted. Closing the iterator
        early (the client went away) cancels the request in the cluster."""

    @abc.abstractmethod
    async def cancel(self, request_id: str, reason: str) -> None:
        """Ask the cluster to stop working on a request."""

    @abc.abstractmethod
    async def models(self, *, refresh: bool = False) -> list[ModelCard]:
        """Models served right now, sorted by name (`refresh`: do not use a cached list)."""

    @abc.abstractmethod
    async def resolve_model(self, requested: str | None) -> str:
        """The model a request should use (the one it names, or the default when it names none);
        ModelNotFoundError / NoWorkersError when none fits."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether requests can be submitted and their answers received."""
