"""Tenants and API keys: the keys file, keys in the real Redis, priority capping, and 401 over the
real HTTP and gRPC APIs (keys never logged)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI, AuthenticationError

from shared.protos import gateway_pb2, gateway_pb2_grpc
from shared.records import Priority
from shared.settings import ClusterSettings

from services.gateway.errors import UnauthorizedError
from services.gateway.tenants import (
    Tenant,
    TenantDirectory,
    TenantSpec,
    cap_priority,
    key_fingerprint,
    key_hash,
    load_keys_file,
    redis_keys_hash,
)

from tests.services.gateway.conftest import ANSWER, FAKE_MODEL, FakeBatcher

KEY_A = "sk-tenant-a-0123456789"
KEY_B = "sk-tenant-b-9876543210"


def write_keys(path: Path) -> Path:
    path.write_text(
        "# API keys\n"
        f"{KEY_A}:\n  name: team-a\n  default_priority: low\n  max_priority: normal\n  requests_per_min: 100\n"
        f"{KEY_B}:\n  name: team-b\n  default_priority: high\n"
    )
    return path


def test_cap_priority() -> None:
    assert cap_priority(Priority.HIGH, Priority.NORMAL) is Priority.NORMAL
    assert cap_priority(Priority.LOW, Priority.NORMAL) is Priority.LOW
    assert cap_priority(Priority.HIGH, Priority.HIGH) is Priority.HIGH
    assert cap_priority(Priority.NORMAL, Priority.LOW) is Priority.LOW


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    specs = load_keys_file(write_keys(tmp_path / "keys.yaml"))
    assert specs[key_hash(KEY_A)].name == "team-a"
    assert specs[key_hash(KEY_A)].requests_per_min == 100
    assert specs[key_hash(KEY_B)].default_priority is Priority.HIGH
    assert KEY_A not in specs  # stored by hash only
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps({KEY_A: {"name": "j", "tokens_per_min": 5}}))
    assert load_keys_file(json_file)[key_hash(KEY_A)].tokens_per_min == 5


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", "short:\n  name: x\n", f"{KEY_A}:\n  name: x\n  bogus: 1\n", f"{KEY_A}:\n  name: x\n  max_priority: urgent\n", "{{{"],
)
def test_bad_keys_files_are_refused_clearly(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match="API keys file"):
        load_keys_file(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_keys_file(tmp_path / "missing.yaml")


def test_default_priority_is_capped_by_max() -> None:
    tenant = Tenant.from_spec(TenantSpec(name="x", default_priority=Priority.HIGH, max_priority=Priority.LOW), "id")
    assert tenant.default_priority is Priority.LOW


async def test_directory_open_mode_and_keys(redis_url: str, unique_prefix: str) -> None:
    redis = aioredis.from_url(redis_url)
    try:
        open_tenant = Tenant(name="default")
        directory = TenantDirectory({}, redis=redis, prefix=unique_prefix, open_tenant=open_tenant)
        await directory.start()
        assert directory.open
        assert await directory.authenticate(None) is open_tenant

        await redis.hset(redis_keys_hash(unique_prefix), key_hash(KEY_B), TenantSpec(name="from-redis").model_dump_json())
        await redis.hset(redis_keys_hash(unique_prefix), key_hash("sk-broken-entry"), "{not json")
        directory = TenantDirectory(
            {key_hash(KEY_A): TenantSpec(name="from-file")}, redis=redis, prefix=unique_prefix, open_tenant=open_tenant
        )
        await directory.start()
        assert not directory.open
        assert (await directory.authenticate(f"Bearer {KEY_A}")).name == "from-file"
        tenant_b = await directory.authenticate(f"bearer   {KEY_B}  ")
        assert tenant_b.name == "from-redis" and tenant_b.key_id == key_fingerprint(KEY_B)
        for bad in (None, "", "Bearer", "Basic abc", f"Token {KEY_A}", "Bearer sk-nope-123456", "Bearer sk-broken-entry"):
            with pytest.raises(UnauthorizedError):
                await directory.authenticate(bad)
    finally:
        await redis.aclose()


async def test_http_requires_keys_and_uses_the_tenant(
    start_gateway, fake_batcher: FakeBatcher, registered_worker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = await start_gateway(api_keys_file=write_keys(tmp_path / "keys.yaml"))
    base = f"http://127.0.0.1:{service.http_port}/v1"
    async with AsyncOpenAI(api_key="sk-wrong-key-000000", base_url=base, max_retries=0) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    async with httpx.AsyncClient(base_url=base) as http:
        missing = await http.post("/chat/completions", json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x"}]})
        models = await http.get("/models")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"
    assert models.status_code == 401

    async with AsyncOpenAI(api_key=KEY_A, base_url=base, max_retries=0) as client:
        assert [m.id async for m in client.models.list()] == [FAKE_MODEL]
        answer = await client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"priority": "high"}
        )
        await client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "hi again"}])
    async with AsyncOpenAI(api_key=KEY_B, base_url=base, max_retries=0) as client:
        await client.completions.create(model=FAKE_MODEL, prompt="b's prompt")
    assert answer.choices[0].message.content == ANSWER
    first, second, third = await fake_batcher.wait_for_requests(3)
    assert (first.tenant, first.priority) == ("team-a", Priority.NORMAL)  # high capped at max normal
    assert (second.tenant, second.priority) == ("team-a", Priority.LOW)  # the tenant's default
    assert (third.tenant, third.priority) == ("team-b", Priority.HIGH)
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert KEY_A not in logged and KEY_B not in logged and "sk-wrong-key" not in logged
    assert key_fingerprint(KEY_A) in logged


async def test_grpc_auth_via_metadata(start_gateway, fake_batcher: FakeBatcher, registered_worker, tmp_path: Path) -> None:
    service = await start_gateway(api_keys_file=write_keys(tmp_path / "keys.yaml"))
    request = gateway_pb2.GenerateRequest(model=FAKE_MODEL, prompt="hello")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(request, timeout=10, metadata=(("authorization", "Bearer sk-nope-1234567"),))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        response = await stub.Generate(request, timeout=10, metadata=(("authorization", f"Bearer {KEY_B}"),))
    assert response.text == ANSWER
    (sent,) = await fake_batcher.wait_for_requests(1)
    assert sent.tenant == "team-b" and sent.priority is Priority.HIGH


async def test_a_bad_keys_file_stops_the_start(start_gateway, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("[]")
    with pytest.raises(ValueError, match="API keys file"):
        await start_gateway(api_keys_file=path)


async def test_open_mode_says_so(start_gateway, caplog: pytest.LogCaptureFixture, cluster_settings: ClusterSettings) -> None:
    caplog.set_level(logging.WARNING)
    await start_gateway()
    assert any("OPEN" in r.getMessage() for r in caplog.records)
