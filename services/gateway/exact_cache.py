"""The exact cache: whole answers in Redis, keyed by a hash of everything that decides them.

Key = SHA-256 of (tenant, model, the canonical messages or prompt, every generation parameter —
`max_new_tokens` included, since a shorter limit gives a shorter answer). Tenants never
share entries: the tenant is part of the key. Entries expire after `gateway_cache_ttl_s`. Each entry
is also listed under the id of the request that produced it (`<prefix>:cache:byreq:<id>`), so that a
guardian verdict on that request can purge it (see cache_purge.py).
"""

from __future__ import annotations

import hashlib
import json
import logging

import redis.asyncio as aioredis
from pydantic import BaseModel, Field, ValidationError

from shared.records import FinishReason, GenerationRequest, Usage

__all__ = ["CachedAnswer", "ExactCache", "exact_key", "request_index_key", "scope_fingerprint"]

log = logging.getLogger(__name__)


class CachedAnswer(BaseModel):
    """One cached answer."""

    text: str
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = Usage()
    model: str
    source_request_id: str = Field(min_length=1, max_length=256)
    """The request whose generation this is (purges go by it)."""
    query: str = ""
    """The text the semantic cache compared (semantic entries only)."""


def _canonical_input(request: GenerationRequest) -> object:
    if request.messages is not None:
        return [[m.role, m.content] for m in request.messages]
    if request.prompt_token_ids is not None:
        # Never looked up today (ResponseCache.cacheable refuses them), but a key must not let
        # every prompt of ids share the key of "no prompt".
        return {"token_ids": list(request.prompt_token_ids)}
    return request.prompt


def scope_fingerprint(request: GenerationRequest, *, with_input: bool) -> str:
    """SHA-256 over tenant, model, generation parameters and (with_input) the whole input."""
    params = request.params.model_dump(mode="json")
    material: dict[str, object] = {"tenant": request.tenant, "model": request.model, "params": params}
    if with_input:
        material["input"] = _canonical_input(request)
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def exact_key(prefix: str, request: GenerationRequest) -> str:
    return f"{prefix}:cache:exact:{scope_fingerprint(request, with_input=True)}"


def request_index_key(prefix: str, request_id: str) -> str:
    """The set of cache entries (exact keys, `semantic:<point id>`) made from one request."""
    return f"{prefix}:cache:byreq:{request_id}"


class ExactCache:
    """Answers in Redis."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s

    def key_for(self, request: GenerationRequest) -> str:
        return exact_key(self._prefix, request)

    async def get(self, key: str) -> CachedAnswer | None:
        raw = await self._redis.get(key)
        if raw is None:
            return None
        try:
            return CachedAnswer.model_validate_json(raw)
        except ValidationError:
            # An entry from an incompatible version: treat as a miss; the next answer replaces it.
            log.warning("unreadable exact-cache entry ignored", extra={"key": key})
            return None

    async def put(self, key: str, answer: CachedAnswer) -> None:
        index = request_index_key(self._prefix, answer.source_request_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, answer.model_dump_json(), ex=self._ttl_s)
            pipe.sadd(index, key)
            pipe.expire(index, self._ttl_s)
            await pipe.execute()

    async def index(self, request_id: str, entry: str) -> None:
        """List `entry` (an exact key or `semantic:<point id>`) under `request_id`."""
        index = request_index_key(self._prefix, request_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(index, entry)
            pipe.expire(index, self._ttl_s)
            await pipe.execute()
