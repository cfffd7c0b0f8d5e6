"""Per-tenant rate limits in the real Redis: the Lua token buckets and concurrency counter directly,
then across TWO gateway instances in-process that share them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from services.gateway.errors import TooManyRequestsError
from services.gateway.rate_limits import RateLimiter, estimate_tokens
from services.gateway.tenants import Tenant

from tests.services.gateway.conftest import FAKE_MODEL, FakeBatcher


@pytest.fixture
async def redis(redis_url: str):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def test_estimate_tokens() -> None:
    assert estimate_tokens(0, 10) == 10
    assert estimate_tokens(9, 10) == 13
    assert estimate_tokens(0, 10, prompt_token_ids=5) == 15  # a prompt of token ids counts its ids


async def test_requests_per_minute(redis, unique_prefix: str) -> None:
    limiter = RateLimiter(redis, prefix=unique_prefix, concurrency_ttl_s=60)
    tenant = Tenant(name="rpm", requests_per_min=2)
    for _ in range(2):
        await (await limiter.acquire(tenant, 1)).release(1)
    with pytest.raises(TooManyRequestsError) as info:
        await limiter.acquire(tenant, 1)
    # One request per 30 s comes back: the Retry-After says how long to wait.
    assert 1 <= (info.value.retry_after_s or 0) <= 30
    assert "requests per min" in info.value.message
    # Another tenant is not affected.
    await limiter.acquire(Tenant(name="other", requests_per_min=2), 1)


async def test_tokens_per_minute_reconciled_with_usage(redis, unique_prefix: str) -> None:
    limiter = RateLimiter(redis, prefix=unique_prefix, concurrency_ttl_s=60)
    tenant = Tenant(name="tpm", tokens_per_min=100)
    slot = await limiter.acquire(tenant, 90)
    with pytest.raises(TooManyRequestsError, match="tokens per min"):
        await limiter.acquire(tenant, 50)
    await slot.release(10)  # only 10 were used: 80 come back
    await slot.release(10)  # idempotent
    slot = await limiter.acquire(tenant, 80)
    await slot.release(None)
    # A request larger than the whole bucket needs a full bucket, not forever.
    with pytest.raises(TooManyRequestsError):
        await limiter.acquire(tenant, 1_000)


async def test_concurrency_counter(redis, unique_prefix: str) -> None:
    limiter = RateLimiter(redis, prefix=unique_prefix, concurrency_ttl_s=60)
    tenant = Tenant(name="conc", max_concurrent=2)
    first = await limiter.acquire(tenant, 1)
    second = await limiter.acquire(tenant, 1)
    with pytest.raises(TooManyRequestsError, match="max concurrent"):
        await limiter.acquire(tenant, 1)
    await first.release(None)
    third = await limiter.acquire(tenant, 1)
    key = f"{unique_prefix}:ratelimit:{{conc}}:concurrent"
    assert int(await redis.get(key)) == 2
    assert 0 < await redis.ttl(key) <= 60  # the safety TTL against gateways that die
    for slot in (second, third, third):
        await slot.release(None)
    assert int(await redis.get(key)) == 0  # never below zero


async def test_unlimited_tenant_touches_nothing(redis, unique_prefix: str) -> None:
    limiter = RateLimiter(redis, prefix=unique_prefix, concurrency_ttl_s=60)
    slot = await limiter.acquire(Tenant(name="free"), 10**6)
    await slot.release(5)
    assert await redis.keys(f"{unique_prefix}:ratelimit:*") == []


def keys_file(tmp_path: Path, **limits: int) -> Path:
    path = tmp_path / "keys.json"
    import json

    path.write_text(json.dumps({"sk-shared-tenant-key": {"name": "shared", **limits}}))
    return path


def body(content: str, **extra: object) -> dict[str, object]:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def test_request_limit_shared_by_two_gateways(
    start_gateway, fake_batcher: FakeBatcher, registered_worker, tmp_path: Path
) -> None:
    path = keys_file(tmp_path, requests_per_min=3)
    one = await start_gateway(api_keys_file=path, instance_id="gw-one")
    two = await start_gateway(api_keys_file=path, instance_id="gw-two")
    assert one.settings.instance_id != two.settings.instance_id
    auth = {"Authorization": "Bearer sk-shared-tenant-key"}
    async with httpx.AsyncClient(headers=auth, timeout=20) as http:
        answers = [
            await http.post(f"http://127.0.0.1:{service.http_port}/v1/chat/completions", json=body(f"q{i}"))
            for i, service in enumerate((one, two, one))
        ]
        refused = [
            await http.post(f"http://127.0.0.1:{service.http_port}/v1/chat/completions", json=body("more"))
            for service in (one, two)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    for answer in refused:
        assert answer.status_code == 429
        assert int(answer.headers["retry-after"]) >= 1
        error = answer.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert "shared" in error["message"]
        assert answer.headers["x-request-id"].startswith("chatcmpl-")


async def test_concurrency_limit_shared_by_two_gateways(
    start_gateway, fake_batcher: FakeBatcher, registered_worker, tmp_path: Path
) -> None:
    path = keys_file(tmp_path, max_concurrent=1)
    one = await start_gateway(api_keys_file=path, instance_id="gw-one")
    two = await start_gateway(api_keys_file=path, instance_id="gw-two")
    auth = {"Authorization": "Bearer sk-shared-tenant-key"}
    async with httpx.AsyncClient(headers=auth, timeout=20) as http:
        held = asyncio.create_task(http.post(f"http://127.0.0.1:{one.http_port}/v1/chat/completions", json=body("[hold]")))
        await fake_batcher.wait_for_requests(1)
        refused = await http.post(f"http://127.0.0.1:{two.http_port}/v1/chat/completions", json=body("second"))
        assert refused.status_code == 429 and "max concurrent" in refused.json()["error"]["message"]
        held.cancel()  # the client goes away: its slot must come back
        await asyncio.gather(held, return_exceptions=True)
        await fake_batcher.wait_for_cancel(fake_batcher.requests[0].id)
        for _ in range(100):  # the gateway frees the slot as it notices the disconnect
            ok = await http.post(f"http://127.0.0.1:{two.http_port}/v1/chat/completions", json=body("third"))
            if ok.status_code != 429:
                break
            await asyncio.sleep(0.05)
    assert ok.status_code == 200


async def test_grpc_rate_limit_is_resource_exhausted(
    start_gateway, fake_batcher: FakeBatcher, registered_worker, tmp_path: Path
) -> None:
    import grpc

    from shared.protos import gateway_pb2, gateway_pb2_grpc

    service = await start_gateway(api_keys_file=keys_file(tmp_path, requests_per_min=1))
    metadata = (("authorization", "Bearer sk-shared-tenant-key"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        await stub.Generate(gateway_pb2.GenerateRequest(model=FAKE_MODEL, prompt="a"), timeout=10, metadata=metadata)
        call = stub.Generate(gateway_pb2.GenerateRequest(model=FAKE_MODEL, prompt="b"), timeout=10, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(info.value.trailing_metadata() or ())
    assert int(trailing["retry-after"]) >= 30
