"""The exact cache's keys and its Redis entries (real Redis)."""

from __future__ import annotations

import redis.asyncio as aioredis

from shared.records import ChatMessage, GenerationParams, GenerationRequest, Usage

from services.gateway.exact_cache import CachedAnswer, ExactCache, exact_key, request_index_key


def request(**changes: object) -> GenerationRequest:
    base = GenerationRequest(
        id="r1",
        tenant="a",
        model="m",
        messages=(ChatMessage(role="user", content="What is 2+2?"),),
        params=GenerationParams(temperature=0.0, max_new_tokens=16),
    )
    return base.model_copy(update=changes)


def test_key_depends_on_everything_that_decides_the_answer() -> None:
    key = exact_key("p", request())
    assert key.startswith("p:cache:exact:")
    assert exact_key("p", request(id="other", priority="high", deadline=5.0, created_at=9.0)) == key
    for changed in (
        request(tenant="b"),
        request(model="m2"),
        request(messages=(ChatMessage(role="user", content="What is 2+3?"),)),
        request(messages=(ChatMessage(role="system", content="What is 2+2?"),)),
        request(params=GenerationParams(temperature=0.0, max_new_tokens=17)),
        request(params=GenerationParams(temperature=0.0, max_new_tokens=16, stop=("x",))),
        request(messages=None, prompt="What is 2+2?"),
    ):
        assert exact_key("p", changed) != key


async def test_put_get_and_index(redis_url: str, unique_prefix: str) -> None:
    redis = aioredis.from_url(redis_url)
    try:
        cache = ExactCache(redis, prefix=unique_prefix, ttl_s=60)
        key = cache.key_for(request())
        assert await cache.get(key) is None
        answer = CachedAnswer(text="4", usage=Usage(prompt_tokens=3, completion_tokens=1), model="m", source_request_id="r1")
        await cache.put(key, answer)
        assert await cache.get(key) == answer
        assert 0 < await redis.ttl(key) <= 60
        index = request_index_key(unique_prefix, "r1")
        assert await redis.smembers(index) == {key.encode()}
        await cache.index("hit-1", key)
        assert await redis.smembers(request_index_key(unique_prefix, "hit-1")) == {key.encode()}
        await redis.set(key, b"not json")
        assert await cache.get(key) is None  # an unreadable entry is a miss
    finally:
        await redis.aclose()
