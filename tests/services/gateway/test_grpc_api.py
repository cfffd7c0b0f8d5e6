"""The public gRPC API with a real grpc.aio client against a real gateway, the real broker and the
fake batcher: unary and streaming generation, deadlines, cancellation, errors, health, reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shared.protos import gateway_pb2, gateway_pb2_grpc
from shared.records import Priority

from services.gateway.service import GatewayService

from tests.services.gateway.conftest import ANSWER, ANSWER_TOKENS, FAKE_MODEL, FakeBatcher

pytestmark = pytest.mark.usefixtures("registered_worker")


def channel_for(service: GatewayService) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}")


def trailing(metadata: object) -> dict[str, str]:
    return {k: v for k, v in (metadata or ())}  # type: ignore[union-attr]


async def test_unary_generate(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.Generate(
            gateway_pb2.GenerateRequest(
                model=FAKE_MODEL,
                messages=[gateway_pb2.ChatMessage(role="user", content="hi")],
                max_tokens=20,
                temperature=0.7,
                has_temperature=True,
                top_p=0.9,
                top_k=5,
                stop=["END"],
                seed=3,
                has_seed=True,
                priority=gateway_pb2.PRIORITY_LOW,
                repetition_penalty=1.2,
                presence_penalty=0.3,
                frequency_penalty=-0.6,
                logit_bias={42: -100.0, 7: 0.5},
            ),
            timeout=10,
        )
        response = await call
        metadata = trailing(await call.trailing_metadata())
    assert response.text == ANSWER
    assert response.finish_reason == "stop"
    assert response.model == FAKE_MODEL
    assert response.usage.completion_tokens == len(ANSWER_TOKENS)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert metadata["x-request-id"] == response.id and response.id.startswith("gen-")
    (sent,) = fake_batcher.requests
    assert sent.priority is Priority.LOW
    assert sent.params.temperature == 0.7  # not 0.699999988 (float32)
    assert sent.params.top_p == 0.9 and sent.params.top_k == 5 and sent.params.seed == 3
    assert sent.params.repetition_penalty == 1.2 and sent.params.stop == ("END",)
    assert (sent.params.presence_penalty, sent.params.frequency_penalty) == (0.3, -0.6)
    assert sent.params.logit_bias == {42: -100.0, 7: 0.5}
    assert sent.params.max_new_tokens == 20
    # The call's deadline became the request's deadline (10 s, not the 300 s default).
    assert sent.deadline is not None and sent.deadline - sent.created_at < 11


async def test_stream_generate(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        chunks = [
            chunk
            async for chunk in stub.GenerateStream(gateway_pb2.GenerateRequest(prompt="Once", max_tokens=4))
        ]
    assert "".join(c.text for c in chunks) == "".join(ANSWER_TOKENS[:4])
    assert chunks[-1].final and chunks[-1].finish_reason == "length" and chunks[-1].text == ""
    assert not any(c.final for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens == 4
    assert len({c.id for c in chunks}) == 1
    assert fake_batcher.requests[0].stream is True
    assert fake_batcher.requests[0].model == FAKE_MODEL  # empty model = the served one
    sent = fake_batcher.requests[0]
    assert sent.deadline is not None and 299 < sent.deadline - sent.created_at < 301  # no call deadline: the default


async def test_a_prompt_of_token_ids_over_grpc(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        response = await stub.Generate(gateway_pb2.GenerateRequest(prompt_token_ids=[4, 2], max_tokens=2), timeout=10)
        request = gateway_pb2.GenerateRequest(prompt_token_ids=[4, 2], max_tokens=2)
        chunks = [chunk async for chunk in stub.GenerateStream(request, timeout=10)]
    assert response.text == "".join(ANSWER_TOKENS[:2])  # the decoding is not part of the answer
    assert "".join(c.text for c in chunks) == response.text
    assert [(r.prompt, r.prompt_token_ids) for r in fake_batcher.requests] == [(None, (4, 2))] * 2


async def test_invalid_input_is_invalid_argument(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for request, needle in [
            (gateway_pb2.GenerateRequest(), "Exactly one of"),
            (gateway_pb2.GenerateRequest(prompt="x", temperature=3, has_temperature=True), "temperature"),
            (gateway_pb2.GenerateRequest(prompt="x", max_tokens=1_000_000), "max_tokens"),
            (gateway_pb2.GenerateRequest(messages=[gateway_pb2.ChatMessage(role="robot", content="x")]), "role"),
            (gateway_pb2.GenerateRequest(prompt="x", stop=["a", "b", "c", "d", "e"]), "stop"),
            (gateway_pb2.GenerateRequest(prompt="x", priority=42), "priority"),
            (gateway_pb2.GenerateRequest(prompt="x", logprobs=True, top_logprobs=21), "top_logprobs"),
            (gateway_pb2.GenerateRequest(prompt="x", prompt_token_ids=[1]), "Exactly one of"),
            (gateway_pb2.GenerateRequest(prompt_token_ids=[1, 2**31]), "prompt_token_ids"),
            (gateway_pb2.GenerateRequest(prompt_token_ids=[0] * 32_769), "at most 32768"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Generate(request, timeout=10)
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT, request
            assert needle in (failed.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(gateway_pb2.GenerateRequest(prompt="x", model="nope"), timeout=10)
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(gateway_pb2.GenerateRequest(prompt="x" * 1_100_000), timeout=10)
        assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # over the body limit
        stream = stub.GenerateStream(gateway_pb2.GenerateRequest(prompt="x", top_p=5), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _ in stream:
                pass
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fake_batcher.requests == []


async def test_bytes_that_are_not_a_generate_request_are_invalid_argument(
    start_gateway, fake_batcher: FakeBatcher
) -> None:
    # grpcio's own parse failure would be UNKNOWN; the error boundary parses the message.
    service = await start_gateway()
    async with channel_for(service) as channel:
        unary = channel.unary_unary("/lgc.gateway.v1.Gateway/Generate", request_serializer=None, response_deserializer=None)
        stream = channel.unary_stream(
            "/lgc.gateway.v1.Gateway/GenerateStream", request_serializer=None, response_deserializer=None
        )
        for raw in (b"\x0f\x01", b"\x1a\x05ab", b"\x1a\x02\xff\xfe"):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary(raw, timeout=10)
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raw
            assert "not a valid lgc.gateway.v1.GenerateRequest message" in (failed.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in stream(raw, timeout=10):
                    pass
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raw
        answer = await gateway_pb2_grpc.GatewayStub(channel).Generate(gateway_pb2.GenerateRequest(prompt="x"), timeout=30)
        assert answer.text == ANSWER
    assert len(fake_batcher.requests) == 1


async def test_reply_errors_become_statuses(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.Generate(gateway_pb2.GenerateRequest(prompt="[error:overloaded]"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        metadata = trailing(failed.value.trailing_metadata())
        assert metadata["retry-after"] == "1" and metadata["lgc-error-code"] == "overloaded"
        assert metadata["x-request-id"].startswith("gen-")
        stream = stub.GenerateStream(gateway_pb2.GenerateRequest(prompt="[late][error:deadline_exceeded]"), timeout=10)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for chunk in stream:
                received.append(chunk)
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert [c.text for c in received] == [ANSWER_TOKENS[0]]


async def test_deadline_and_cancellation_cancel_the_request(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(gateway_pb2.GenerateRequest(prompt="[hold]"), timeout=0.5)
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        (timed_out,) = await fake_batcher.wait_for_requests(1)
        assert timed_out.deadline is not None and timed_out.deadline - timed_out.created_at <= 0.6
        await fake_batcher.wait_for_cancel(timed_out.id)

        stream = stub.GenerateStream(gateway_pb2.GenerateRequest(prompt="[stall]"), timeout=10)
        first = await stream.read()
        assert first.text == ANSWER_TOKENS[0]
        stream.cancel()
        stalled = (await fake_batcher.wait_for_requests(2))[1]
        cancel = await fake_batcher.wait_for_cancel(stalled.id)
        assert cancel.reason == "client_disconnected"


async def test_health_and_reflection(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "lgc.gateway.v1.Gateway"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for response in responses:
            names = {s.name for s in response.list_services_response.service}
            break
        assert "lgc.gateway.v1.Gateway" in names and "grpc.health.v1.Health" in names


async def test_grpc_and_http_share_the_inflight_bound(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_max_inflight=1)
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        held = stub.Generate(gateway_pb2.GenerateRequest(prompt="[hold]"), timeout=10)
        held_task = asyncio.ensure_future(held)
        await fake_batcher.wait_for_requests(1)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(gateway_pb2.GenerateRequest(prompt="hi"), timeout=10)
        assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        held.cancel()
        await asyncio.gather(held_task, return_exceptions=True)


async def test_logprobs_over_grpc(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    request = gateway_pb2.GenerateRequest(prompt="Once", max_tokens=3, logprobs=True, top_logprobs=2)
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        response = await stub.Generate(request, timeout=10)
        chunks = [chunk async for chunk in stub.GenerateStream(request)]
        plain = await stub.Generate(gateway_pb2.GenerateRequest(prompt="Once", max_tokens=3), timeout=10)
    assert [lp.token for lp in response.logprobs] == list(ANSWER_TOKENS[:3])
    assert [lp.token_id for lp in response.logprobs] == [0, 1, 2]
    assert response.logprobs[0].logprob == pytest.approx(-0.1)  # float32 on the wire
    assert [[t.token for t in lp.top] for lp in response.logprobs[:1]] == [["Hello", "alt1"]]
    # Streamed: each chunk carries the log probabilities of its own tokens.
    assert [[lp.token for lp in c.logprobs] for c in chunks if c.text] == [[t] for t in ANSWER_TOKENS[:3]]
    assert chunks[-1].final and not chunks[-1].logprobs
    assert not plain.logprobs  # not asked for
    assert (fake_batcher.requests[0].params.logprobs, fake_batcher.requests[0].params.top_logprobs) == (True, 2)


async def test_token_ids_and_prompt_logprobs_over_grpc(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    ids = [100 + i for i in range(3)]  # the fake batcher's: token i is id 100 + i
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = gateway_pb2.GenerateRequest(prompt="Say it", max_tokens=3, return_token_ids=True, n=2)
        response = await stub.Generate(request, timeout=10)
        chunks = [chunk async for chunk in stub.GenerateStream(request, timeout=10)]
        scored = await stub.Generate(
            gateway_pb2.GenerateRequest(prompt="Say it", max_tokens=1, prompt_logprobs=True, prompt_top_logprobs=1),
            timeout=10,
        )
        plain = await stub.Generate(gateway_pb2.GenerateRequest(prompt="Say it", max_tokens=3), timeout=10)
        for refused, needle in [
            (gateway_pb2.GenerateRequest(prompt="x", prompt_top_logprobs=1), "prompt_logprobs must be true"),
            (gateway_pb2.GenerateRequest(prompt="x", prompt_logprobs=True, prompt_top_logprobs=21), "at most 20"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Generate(refused, timeout=10)
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT and needle in (failed.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _ in stub.GenerateStream(gateway_pb2.GenerateRequest(prompt="x", prompt_logprobs=True)):
                pass
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # as vLLM: not with streaming
    # Whole: the prompt's ids once (the fake's words are 1, 2), every choice's own; choice 0 on top.
    assert list(response.prompt_token_ids) == [1, 2] and list(response.token_ids) == ids
    assert [list(c.token_ids) for c in response.choices] == [ids, ids]
    # Streamed: the prompt's ids once, on the first chunk after they came; each chunk its own.
    with_prompt = [c for c in chunks if c.prompt_token_ids]
    assert len(with_prompt) == 1 and list(with_prompt[0].prompt_token_ids) == [1, 2]
    for index in (0, 1):
        assert [t for c in chunks if c.index == index for t in c.token_ids] == ids
    # The prompt's log probabilities, with ranks; the first token has none.
    assert [(lp.token, lp.rank) for lp in scored.prompt_logprobs] == [("Say", 0), (" it", 1)]
    assert [t.token for t in scored.prompt_logprobs[1].top] == [" it"]
    assert [r.params.prompt_logprobs for r in fake_batcher.requests if r.params.max_new_tokens == 1] == [1]
    assert not plain.prompt_token_ids and not plain.token_ids and not plain.prompt_logprobs  # not asked for


async def test_several_choices_over_grpc(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.Generate(
            gateway_pb2.GenerateRequest(prompt="Once", max_tokens=2, n=3, seed=5, has_seed=True, logprobs=True),
            timeout=10,
        )
        response = await call
        metadata = trailing(await call.trailing_metadata())
        one = await stub.Generate(gateway_pb2.GenerateRequest(prompt="Once", max_tokens=2), timeout=10)
    two_tokens = "".join(ANSWER_TOKENS[:2])
    assert [(c.index, c.text, c.finish_reason) for c in response.choices] == [
        (i, two_tokens, "length") for i in range(3)
    ]
    assert all([lp.token for lp in c.logprobs] == list(ANSWER_TOKENS[:2]) for c in response.choices)
    # Choice 0 is also where a one-choice client reads it.
    assert (response.text, response.finish_reason, len(response.logprobs)) == (two_tokens, "length", 2)
    # The prompt once, every choice's tokens.
    assert response.usage.completion_tokens == 6
    assert response.usage.total_tokens == response.usage.prompt_tokens + 6
    assert metadata["x-lgc-cache"] == "bypass"
    sent = sorted(fake_batcher.requests[:3], key=lambda r: r.id)
    assert [r.id for r in sent] == [f"{response.id}.{i}" for i in range(3)]
    assert [r.params.seed for r in sent] == [5, 6, 7]
    # One choice: the same answer, listed once under choices too.
    assert [(c.index, c.text) for c in one.choices] == [(0, two_tokens)] and one.text == two_tokens


async def test_several_choices_streamed_over_grpc(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        chunks = [chunk async for chunk in stub.GenerateStream(gateway_pb2.GenerateRequest(prompt="Once", n=2))]
    for index in (0, 1):
        own = [c for c in chunks if c.index == index]
        assert "".join(c.text for c in own) == ANSWER
        # Each choice ends with one chunk that says why.
        assert [c.finish_reason for c in own if c.finish_reason] == ["stop"] and own[-1].finish_reason == "stop"
    # One final chunk, the stream's last, with the usage of both choices.
    assert [c.final for c in chunks].count(True) == 1 and chunks[-1].final
    assert chunks[-1].usage.completion_tokens == 2 * len(ANSWER_TOKENS)
    assert not any(c.HasField("usage") for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_choices_over_grpc_within_the_gateways_limit(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_max_choices=2)
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(gateway_pb2.GenerateRequest(prompt="x", n=3), timeout=10)
        allowed = await stub.Generate(gateway_pb2.GenerateRequest(prompt="x", n=2), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 2" in (refused.value.details() or "")
    assert len(allowed.choices) == 2
    assert not fake_batcher.requests[2:]  # the refused request sent nothing


async def test_a_failing_choice_fails_the_grpc_call_and_cancels_the_rest(
    start_gateway, fake_batcher: FakeBatcher
) -> None:
    service = await start_gateway()
    async with channel_for(service) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(gateway_pb2.GenerateRequest(prompt="[fail-choice:1][hold]", n=3), timeout=10)
        request_id = trailing(failed.value.trailing_metadata())["x-request-id"]
        cancels = [await fake_batcher.wait_for_cancel(f"{request_id}.{i}") for i in (0, 2)]
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert [c.request_id for c in cancels] == [f"{request_id}.0", f"{request_id}.2"]
