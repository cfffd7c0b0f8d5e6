"""The gateway's caches behind one face: exact (Redis) first, then semantic (Qdrant), and the
recording of fresh answers into both.

A lookup gives a :class:`CacheLookup`: its `status` (hit-exact, hit-semantic, miss, bypass), the
answer on a hit, and on a miss what is needed to store the answer when it comes (the exact key, the
semantic probe with its embedding, so nothing is computed twice). Cache failures (Redis or Qdrant
down) never fail a request: they are logged and the request goes to the cluster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.records import CachePolicy, CacheStatus, GenerationRequest, ReplyEvent

from services.gateway.cache_policy import is_cacheable
from services.gateway.exact_cache import CachedAnswer, ExactCache
from services.gateway.semantic_cache import SemanticCache, SemanticProbe

__all__ = ["CacheLookup", "ResponseCache"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CacheLookup:
    """What the caches said about one request."""

    status: CacheStatus
    answer: CachedAnswer | None = None
    store: bool = False
    """Whether the fresh answer should be stored."""
    exact_key: str | None = None
    probe: SemanticProbe | None = None
    entry: str | None = None
    """On a hit: the entry that answered (exact key, or `semantic:<point id>`)."""


class ResponseCache:
    """Exact and (optional) semantic cache."""

    def __init__(
        self, exact: ExactCache, semantic: SemanticCache | None, *, deterministic_only: bool
    ) -> None:
        self.exact = exact
        self.semantic = semantic
        self._deterministic_only = deterministic_only

    def cacheable(self, request: GenerationRequest) -> bool:
        """Whether the caches may answer or store `request` (cache_policy.is_cacheable). A prompt
        of token ids never: the caches key on text, which only a worker can make of them."""
        if request.prompt_token_ids is not None:
            return False
        return is_cacheable(request.params, deterministic_only=self._deterministic_only)

    async def lookup(self, request: GenerationRequest, policy: CachePolicy) -> CacheLookup:
        if not self.cacheable(request) or not (policy.read or policy.write):
            return CacheLookup(CacheStatus.BYPASS)
        key = self.exact.key_for(request)
        lookup = CacheLookup(CacheStatus.MISS if policy.read else CacheStatus.BYPASS, store=policy.write, exact_key=key)
        if policy.read:
            try:
                answer = await self.exact.get(key)
            except Exception:
                # Safe: a cache that cannot be read is a miss; the cluster answers.
                log.warning("exact cache lookup failed", exc_info=True)
                answer = None
            if answer is not None:
                return CacheLookup(CacheStatus.HIT_EXACT, answer, entry=key)
        if self.semantic is not None and self.semantic.applies_to(request):
            try:
                probe = await self.semantic.probe(request)
                lookup.probe = probe
                if policy.read:
                    found = await self.semantic.find(probe)
                    if found is not None:
                        return CacheLookup(CacheStatus.HIT_SEMANTIC, found[0], entry=f"semantic:{found[1]}")
            except Exception:
                # Safe: the semantic cache is an optimisation; without it the cluster answers.
                log.warning("semantic cache lookup failed", exc_info=True)
        return lookup

    async def note_hit(self, lookup: CacheLookup, request_id: str) -> None:
        """Index the entry that answered under the hit's own request id, so a guardian verdict on
        the hit (published to the results topic under that id) purges the entry too."""
        if lookup.entry is None:
            return
        try:
            await self.exact.index(request_id, lookup.entry)
        except Exception:
            # Safe: the entry can still be purged through the request that produced it.
            log.warning("could not index a cache hit", exc_info=True)

    async def remember(self, lookup: CacheLookup, request: GenerationRequest, final: ReplyEvent) -> None:
        """Store a fresh final answer (only complete ones: `stop` or `length`)."""
        if not lookup.store or lookup.exact_key is None:
            return
        answer = CachedAnswer(
            text=final.text,
            finish_reason=final.finish_reason or "stop",
            usage=final.usage or {},
            model=final.model or request.model,
            source_request_id=request.id,
        )
        try:
            await self.exact.put(lookup.exact_key, answer)
            if lookup.probe is not None and self.semantic is not None:
                await self.semantic.store(lookup.probe, answer)
        except Exception:
            # Safe: not caching an answer only costs a future regeneration.
            log.warning("could not store an answer in the cache", exc_info=True)
