"""Purging answers the guardian flagged: a consumer of `<prefix>.verdicts`.

For a verdict whose action is `flag`, `redact` or `block`, every cache entry made from that request
— or served by it as a cache hit — is deleted: exact keys from Redis and semantic points from
Qdrant, found through the request-id index `<prefix>:cache:byreq:<id>` (see exact_cache.py). Every
gateway instance reads every verdict (a group-less consumer from the end of the topic), because each
may hold semantic points of its own; deleting is idempotent, and the index is left to expire so
that other instances still find it. Records that cannot be parsed are skipped with a warning (the
guardian owns the topic; dead-lettering them from every gateway would multiply them). The consumer
fetches with `kafka_deep_idle_fetch_max_wait_ms` (1 s by default): on Tansu a purge can follow its
verdict by up to that long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from shared.kafka_clients import make_consumer
from shared.records import GuardianVerdict, VerdictAction
from shared.settings import ClusterSettings

from services.gateway.exact_cache import request_index_key
from services.gateway.semantic_cache import SemanticCache

__all__ = ["PURGE_ACTIONS", "CachePurger"]

log = logging.getLogger(__name__)

#: Verdict actions that remove an answer from the caches.
PURGE_ACTIONS = frozenset({VerdictAction.FLAG, VerdictAction.REDACT, VerdictAction.BLOCK})


class CachePurger:
    """Deletes cached answers of flagged requests."""

    def __init__(
        self,
        settings: ClusterSettings,
        *,
        topic: str,
        redis: aioredis.Redis,
        semantic: SemanticCache | None,
        on_purge: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._redis = redis
        self._semantic = semantic
        self._prefix = settings.topic_prefix
        self._on_purge = on_purge or (lambda _n: None)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Verdicts come after the answer was served (the guardian is asynchronous), so a purge may
        # take up to a second more; the deep-idle fetch wait keeps an idle gateway from asking the
        # broker many times a second (Tansu answers a fetch only when its wait ends, and each
        # fetch costs it CPU).
        consumer_settings = self._settings.model_copy(
            update={"kafka_fetch_max_wait_ms": self._settings.kafka_deep_idle_fetch_max_wait_ms}
        )
        self._consumer = make_consumer(
            consumer_settings,
            self._topic,
            client_id=f"gateway-purge-{self._settings.instance_id}",
            group_id=None,
            auto_offset_reset="latest",
        )
        await self._consumer.start()
        # Make the starting position concrete now, so a verdict published right after start is seen.
        await self._consumer.seek_to_end()
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="gateway-cache-purge")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                verdict = GuardianVerdict.from_bytes(record.value)
            except (ValidationError, ValueError):
                # Safe: not ours to repair; skipped (see the module docstring).
                log.warning("unparseable verdict skipped", extra={"offset": record.offset})
                continue
            if verdict.action not in PURGE_ACTIONS:
                continue
            try:
                removed = await self.purge(verdict.request_id)
            except Exception:
                # Safe: the entry still expires with its TTL; the loop must survive Redis blips.
                log.warning("cache purge failed", exc_info=True, extra={"request_id": verdict.request_id})
                continue
            log.info(
                "purged cached answers of a flagged request",
                extra={"request_id": verdict.request_id, "action": verdict.action.value, "entries": removed},
            )

    async def purge(self, request_id: str) -> int:
        """Delete every cache entry made from or served for `request_id`; returns how many."""
        members = await self._redis.smembers(request_index_key(self._prefix, request_id))
        exact_keys: list[str] = []
        points: list[str] = []
        for raw in members:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            if member.startswith("semantic:"):
                points.append(member.removeprefix("semantic:"))
            else:
                exact_keys.append(member)
        removed = 0
        if exact_keys:
            removed += int(await self._redis.delete(*exact_keys))
        if points and self._semantic is not None:
            await self._semantic.delete(points)
            removed += len(points)
        self._on_purge(removed)
        return removed
