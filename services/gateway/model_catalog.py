"""Which models the cluster serves, read from the worker registry in Redis, with a small cache.

The list is reused for `gateway_models_refresh_s`; a request for a model missing from it re-reads
the registry once (at most every `_MIN_REFRESH_S`, so a stream of bad requests cannot hammer Redis)
before it is refused, so a worker that has just started is found at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shared.worker_registry import WorkerInfo, WorkerRegistry

from services.gateway.engine_client import ModelCard
from services.gateway.errors import EngineUnavailableError, ModelNotFoundError, NoWorkersError

__all__ = ["ModelCatalog"]

log = logging.getLogger(__name__)

#: Shortest time between two forced re-reads of the registry.
_MIN_REFRESH_S = 0.25


class ModelCatalog:
    """Served models, and the choice of model for a request."""

    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        refresh_s: float,
        require_workers: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._refresh_s = refresh_s
        self._require_workers = require_workers
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cards: list[ModelCard] | None = None
        self._read_at = float("-inf")
        self._first_seen: dict[str, float] = {}

    async def models(self, *, max_age_s: float | None = None) -> list[ModelCard]:
        """Served models sorted by name, no older than `max_age_s` (default: the refresh period).

        When the registry cannot be read, the last list is returned if there is one (a Redis
        hiccup must not fail every request); otherwise EngineUnavailableError."""
        max_age = self._refresh_s if max_age_s is None else max_age_s
        async with self._lock:
            if self._cards is not None and self._clock() - self._read_at <= max_age:
                return self._cards
            try:
                workers = await self._registry.list()
            except Exception as exc:
                # Safe: an older list is a good answer for a while; without one the caller is
                # told the registry is unreachable (503), never a 500.
                if self._cards is not None:
                    log.warning("worker registry unreachable; using the last model list", exc_info=True)
                    return self._cards
                raise EngineUnavailableError(f"the worker registry cannot be read: {exc}") from exc
            self._cards = self._cards_from(workers)
            self._read_at = self._clock()
            return self._cards

    async def resolve(self, requested: str | None) -> str:
        """The model a request should use: the one it names if a worker serves it, else the first
        served model when it names none. NoWorkersError / ModelNotFoundError otherwise."""
        cards = await self.models()
        if not _serves(cards, requested):
            # The list may be older than a worker that just registered: look again once.
            cards = await self.models(max_age_s=_MIN_REFRESH_S)
        if not requested:
            if not cards:
                raise NoWorkersError("No worker is registered, so no model can serve this request.")
            return cards[0].name
        if _serves(cards, requested):
            return requested
        if not cards:
            if self._require_workers:
                raise NoWorkersError("No worker is registered, so no model can serve this request.")
            return requested
        names = ", ".join(c.name for c in cards)
        raise ModelNotFoundError(
            f"The model '{requested}' does not exist or is not served here (served: {names}).", param="model"
        )

    def _cards_from(self, workers: list[WorkerInfo]) -> list[ModelCard]:
        by_model: dict[str, list[WorkerInfo]] = {}
        for worker in workers:
            if not worker.draining:  # a draining worker takes no new requests
                by_model.setdefault(worker.model, []).append(worker)
        now = time.time()
        cards = []
        for name in sorted(by_model):
            first_seen = self._first_seen.setdefault(name, now)
            members = by_model[name]
            cards.append(
                ModelCard(
                    name=name,
                    workers=len(members),
                    first_seen=first_seen,
                    simulated=all(w.simulated for w in members),
                )
            )
        return cards


def _serves(cards: list[ModelCard], requested: str | None) -> bool:
    if not requested:
        return bool(cards)
    return any(card.name == requested for card in cards)
