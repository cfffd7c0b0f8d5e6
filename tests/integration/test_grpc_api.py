"""The gateway's public gRPC API against the running embedded cluster."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.protos import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import MODEL


@pytest.fixture
async def stub(cluster):
    async with grpc.aio.insecure_channel(cluster.endpoints.grpc_target) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


def _request(**kw) -> gateway_pb2.GenerateRequest:
    base = dict(
        model=MODEL,
        messages=[gateway_pb2.ChatMessage(role="user", content="What is the capital of France?")],
        max_tokens=12,
        temperature=0,
        has_temperature=True,
    )
    base.update(kw)
    return gateway_pb2.GenerateRequest(**base)


async def test_unary_generate(stub) -> None:
    response = await stub.Generate(_request(), timeout=120)
    assert "Paris" in response.text
    assert response.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens > 0
    assert response.id


async def test_streaming_generate_matches_unary(stub) -> None:
    unary = await stub.Generate(_request(), timeout=120)
    chunks = [c async for c in stub.GenerateStream(_request(), timeout=120)]
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == unary.text
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens


async def test_invalid_argument(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(gateway_pb2.GenerateRequest(model=MODEL), timeout=30)  # neither prompt nor messages
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_is_serving(cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.endpoints.grpc_target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
