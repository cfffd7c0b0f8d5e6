"""The exact cache through the real gateway (HTTP and gRPC) on the real broker and Redis: hits,
misses, bypass, Cache-Control, streaming replays, tenant isolation, hits on the results topic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import httpx
import pytest
from openai import AsyncOpenAI

from shared.kafka_clients import make_consumer
from shared.protos import gateway_pb2, gateway_pb2_grpc
from shared.records import CachePolicy, CacheStatus, GenerationParams, GenerationRequest, GenerationResult
from shared.settings import ClusterSettings
from shared.topics import Topics

from services.gateway.response_cache import ResponseCache
from services.gateway.service import GatewayService

from tests.services.gateway.conftest import ANSWER, ANSWER_TOKENS, FAKE_MODEL, FakeBatcher

pytestmark = pytest.mark.usefixtures("registered_worker")


def chat(content: str = "What is 2+2?", **extra: object) -> dict[str, object]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


async def post(service: GatewayService, payload: dict[str, object], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as http:
        response = await http.post(
            f"http://127.0.0.1:{service.http_port}/v1/chat/completions", json=payload, headers=headers
        )
    await service.pipeline.drain()  # cache writes happen in the background
    return response


async def test_exact_hit_after_miss(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    first = await post(service, chat())
    second = await post(service, chat())
    assert first.headers["x-lgc-cache"] == "miss" and second.headers["x-lgc-cache"] == "hit-exact"
    assert second.json()["choices"][0]["message"]["content"] == ANSWER == first.json()["choices"][0]["message"]["content"]
    assert second.json()["usage"] == first.json()["usage"]
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert second.json()["id"] == second.headers["x-request-id"]
    assert len(fake_batcher.requests) == 1  # the hit never reached the cluster
    assert service.registry.get_sample_value("lgc_gateway_cache_hits_total", {"kind": "hit-exact"}) == 1
    # Other parameters are another entry.
    other = await post(service, chat(max_tokens=3))
    assert other.headers["x-lgc-cache"] == "miss"


async def test_only_deterministic_requests_are_cached(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    sampled = chat(temperature=0.8)
    assert (await post(service, sampled)).headers["x-lgc-cache"] == "bypass"
    assert (await post(service, sampled)).headers["x-lgc-cache"] == "bypass"
    seeded = chat(temperature=0.8, seed=42)
    assert (await post(service, seeded)).headers["x-lgc-cache"] == "miss"
    assert (await post(service, seeded)).headers["x-lgc-cache"] == "hit-exact"


async def test_everything_cached_when_configured(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_cache_deterministic_only=False)
    await post(service, chat(temperature=0.8))
    assert (await post(service, chat(temperature=0.8))).headers["x-lgc-cache"] == "hit-exact"


async def test_cache_off(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_cache_enabled=False)
    await post(service, chat())
    assert (await post(service, chat())).headers["x-lgc-cache"] == "bypass"


async def test_cache_control(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    # no-store: answered, not kept.
    assert (await post(service, chat("a"), **{"Cache-Control": "no-store"})).headers["x-lgc-cache"] == "miss"
    assert (await post(service, chat("a"))).headers["x-lgc-cache"] == "miss"
    assert (await post(service, chat("a"))).headers["x-lgc-cache"] == "hit-exact"
    # no-cache: not answered from the cache (but a fresh answer is stored).
    fresh = await post(service, chat("a"), **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-lgc-cache"] == "bypass"
    assert len(fake_batcher.requests) == 3
    both = await post(service, chat("a"), **{"Cache-Control": "no-cache, no-store"})
    assert both.headers["x-lgc-cache"] == "bypass"
    assert fake_batcher.requests[-1].cache.read is False and fake_batcher.requests[-1].cache.write is False


async def test_streaming_hit_replays_as_sse(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    await post(service, chat(stream=True))
    async with AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{service.http_port}/v1", max_retries=0) as client:
        response = await client.chat.completions.with_raw_response.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "What is 2+2?"}],
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert response.headers["x-lgc-cache"] == "hit-exact"
        chunks = [chunk async for chunk in response.parse()]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert len(fake_batcher.requests) == 1
    # A whole answer and a stream of the same request share the entry (stream is not part of the key).
    assert (await post(service, chat())).headers["x-lgc-cache"] == "hit-exact"


async def test_tenant_isolation(start_gateway, fake_batcher: FakeBatcher, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"sk-tenant-one-xyz": {"name": "one"}, "sk-tenant-two-xyz": {"name": "two"}}))
    service = await start_gateway(api_keys_file=keys)
    one = {"Authorization": "Bearer sk-tenant-one-xyz"}
    two = {"Authorization": "Bearer sk-tenant-two-xyz"}
    assert (await post(service, chat(), **one)).headers["x-lgc-cache"] == "miss"
    assert (await post(service, chat(), **one)).headers["x-lgc-cache"] == "hit-exact"
    assert (await post(service, chat(), **two)).headers["x-lgc-cache"] == "miss"
    assert [r.tenant for r in fake_batcher.requests] == ["one", "two"]


async def test_hits_are_published_to_results(
    start_gateway, fake_batcher: FakeBatcher, cluster_settings: ClusterSettings
) -> None:
    service = await start_gateway()
    consumer = make_consumer(
        cluster_settings, Topics.from_settings(cluster_settings).results, client_id="results-test", group_id=None
    )
    await consumer.start()
    try:
        await post(service, chat("publish me"))
        hit = await post(service, chat("publish me"))
        async with asyncio.timeout(10):
            while True:
                record = await consumer.getone()
                result = GenerationResult.from_bytes(record.value)
                if result.request_id == hit.headers["x-request-id"]:
                    break
    finally:
        await consumer.stop()
    assert result.cache_status is CacheStatus.HIT_EXACT
    assert result.text == ANSWER and result.tenant == "default" and result.model == FAKE_MODEL
    assert result.prompt == "user: publish me" and result.worker_id == "cache"


async def test_grpc_hit_metadata(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    message = gateway_pb2.GenerateRequest(model=FAKE_MODEL, prompt="grpc cached", temperature=0, has_temperature=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        statuses = []
        for _ in range(2):
            call = stub.Generate(message, timeout=10)
            response = await call
            statuses.append(dict(await call.trailing_metadata())["x-lgc-cache"])
            await service.pipeline.drain()
        stream = stub.GenerateStream(message, timeout=10, metadata=(("cache-control", "no-cache"),))
        chunks = [chunk async for chunk in stream]
        stream_status = dict(await stream.trailing_metadata())["x-lgc-cache"]
    assert statuses == ["miss", "hit-exact"] and response.text == ANSWER
    assert "".join(c.text for c in chunks) == ANSWER and stream_status == "bypass"


async def test_logprobs_requests_neither_read_nor_write_the_caches(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    assert (await post(service, chat())).headers["x-lgc-cache"] == "miss"
    assert (await post(service, chat())).headers["x-lgc-cache"] == "hit-exact"  # an entry exists
    for _ in range(2):
        asked = await post(service, chat(logprobs=True))
        assert asked.headers["x-lgc-cache"] == "bypass"
        assert [t["token"] for t in asked.json()["choices"][0]["logprobs"]["content"]] == list(ANSWER_TOKENS)
    # Each went to the cluster, and nothing of theirs was stored.
    assert len(fake_batcher.requests) == 3
    assert service.registry.get_sample_value("lgc_gateway_cache_hits_total", {"kind": "hit-exact"}) == 1


class _Untouchable:
    """A cache that fails the test when it is used at all."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the cache was used: {name}")


async def test_a_logprobs_request_touches_neither_cache() -> None:
    cache = ResponseCache(_Untouchable(), _Untouchable(), deterministic_only=True)  # type: ignore[arg-type]
    params = GenerationParams(temperature=0.0, logprobs=True)
    request = GenerationRequest(id="chatcmpl-1", model="m", prompt="p", params=params)
    lookup = await cache.lookup(request, CachePolicy())
    assert lookup.status is CacheStatus.BYPASS and not lookup.store and lookup.answer is None
    assert cache.cacheable(request.model_copy(update={"params": GenerationParams(temperature=0.0)}))
