"""Malformed and out-of-range gRPC calls to the gateway's public API and to a worker, on the
running cluster.

Two kinds of bad input, for both servers:

1. bytes that are not a valid protobuf message at all, sent through a raw channel method with
   identity (de)serializers (`request_serializer=None` passes bytes through): truncated fields,
   an invalid wire type, invalid UTF-8 in a string field;
2. well-formed messages with bad values: neither prompt nor messages, max tokens of 0 or beyond
   every limit (a negative varint decodes as 2**32 - 1 in a uint32 field), temperature and top_p
   out of range, an unknown model, a prompt beyond the configured limit (and a message beyond
   gRPC's size limit), a deadline that has already passed.

The gateway answers each with a gRPC status that says what is wrong (never UNKNOWN or INTERNAL).
A worker fails a whole call that is unusable with a status (no items, invalid bytes), but a bad
*item* is answered on the stream with a `failed` event naming the problem, so that one bad item
does not fail the other items batched with it (services/worker/proto_convert.py); the tests check
both. Afterwards no process has died and valid calls still succeed.
"""

from __future__ import annotations

import functools
import time
import uuid

import grpc
import pytest

from shared.protos import gateway_pb2, worker_pb2
from tests.integration.conftest import MODEL
from tests.integration.gateway_requests import gateway_request

_GATEWAY_GENERATE = "/lgc.gateway.v1.Gateway/Generate"
_GATEWAY_STREAM = "/lgc.gateway.v1.Gateway/GenerateStream"
_WORKER_GENERATE = "/lgc.worker.v1.Worker/Generate"
_WORKER_CANCEL = "/lgc.worker.v1.Worker/Cancel"
#: Statuses that mean "the server did not understand its own failure".
_OPAQUE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

#: Bytes that no protobuf parser accepts as these messages.
_NOT_PROTOBUF = {
    "truncated-length": b"\x1a\x05ab",  # field 3 claims 5 bytes, 2 follow
    "bad-wire-type": b"\x0f\x01",  # field 1 with wire type 7 (does not exist)
    "invalid-utf8-string": b"\x1a\x02\xff\xfe",  # field 3 (a string in both protos) not UTF-8
    "truncated-varint": b"\x20\xff\xff",  # field 4 varint that never ends
}


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative numbers as protobuf writes them: ten bytes, two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# A short greedy request; the cases below replace single fields of it.
_gateway_request = functools.partial(gateway_request, content="Say hello.", max_tokens=4)


def _assert_clear_status(err: grpc.aio.AioRpcError, expected: set[grpc.StatusCode], case: str) -> None:
    assert err.code() not in _OPAQUE, f"{case}: {err.code()} {err.details()!r}"
    assert err.code() in expected, f"{case}: {err.code()} {err.details()!r}"
    assert err.details(), f"{case}: no details with {err.code()}"


@pytest.fixture
async def gateway_channel(cluster):
    async with grpc.aio.insecure_channel(cluster.endpoints.grpc_target) as channel:
        yield channel


@pytest.fixture
async def worker_channel(cluster):
    target = next(iter(cluster.worker_targets.values()))
    async with grpc.aio.insecure_channel(target) as channel:
        yield channel


async def _valid_gateway_call(channel: grpc.aio.Channel) -> None:
    generate = channel.unary_unary(
        _GATEWAY_GENERATE,
        request_serializer=gateway_pb2.GenerateRequest.SerializeToString,
        response_deserializer=gateway_pb2.GenerateResponse.FromString,
    )
    response = await generate(_gateway_request(), timeout=120, metadata=(("cache-control", "no-cache"),))
    assert response.text and response.usage.completion_tokens > 0


# ---- gateway ---------------------------------------------------------------------------------


async def test_gateway_refuses_bytes_that_are_not_protobuf(gateway_channel, cluster) -> None:
    unary = gateway_channel.unary_unary(_GATEWAY_GENERATE, request_serializer=None, response_deserializer=None)
    stream = gateway_channel.unary_stream(_GATEWAY_STREAM, request_serializer=None, response_deserializer=None)
    for case, raw in _NOT_PROTOBUF.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(raw, timeout=30)
        _assert_clear_status(err.value, {grpc.StatusCode.INVALID_ARGUMENT}, f"unary {case}")
        assert "GenerateRequest" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _chunk in stream(raw, timeout=30):
                pass
        _assert_clear_status(err.value, {grpc.StatusCode.INVALID_ARGUMENT}, f"stream {case}")
    assert not cluster.failed
    await _valid_gateway_call(gateway_channel)


async def test_gateway_refuses_bad_values_with_a_clear_status(gateway_channel, cluster) -> None:
    user = [gateway_pb2.ChatMessage(role="user", content="hi")]
    negative_max_tokens = gateway_pb2.GenerateRequest(model=MODEL, messages=user).SerializeToString()
    negative_max_tokens += b"\x20" + _varint(-1)  # field 4, max_tokens
    cases: dict[str, tuple[bytes, set[grpc.StatusCode]]] = {
        "neither prompt nor messages": (gateway_pb2.GenerateRequest(model=MODEL).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "empty prompt, no messages": (gateway_pb2.GenerateRequest(model=MODEL, prompt="").SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "both prompt and messages": (_gateway_request(prompt="hi").SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "negative max_tokens": (negative_max_tokens, {grpc.StatusCode.INVALID_ARGUMENT}),
        "huge max_tokens": (_gateway_request(max_tokens=4_000_000_000).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "temperature above 2": (_gateway_request(temperature=3.5).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "negative temperature": (_gateway_request(temperature=-1).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "temperature NaN": (_gateway_request(temperature=float("nan")).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "top_p above 1": (_gateway_request(top_p=1.5).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "negative top_p": (_gateway_request(top_p=-0.5).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "unknown priority": (_gateway_request(priority=42).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "unknown role": (_gateway_request(messages=[gateway_pb2.ChatMessage(role="robot", content="x")]).SerializeToString(), {grpc.StatusCode.INVALID_ARGUMENT}),
        "unknown model": (_gateway_request(model="no-such-model-" + uuid.uuid4().hex[:8]).SerializeToString(), {grpc.StatusCode.NOT_FOUND}),
        "prompt beyond gateway_max_prompt_chars": (
            _gateway_request(messages=[gateway_pb2.ChatMessage(role="user", content="x" * 100_001)]).SerializeToString(),
            {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED},
        ),
        "message beyond gateway_max_body_bytes": (
            _gateway_request(messages=[gateway_pb2.ChatMessage(role="user", content="x" * 2_000_000)]).SerializeToString(),
            {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT},
        ),
    }
    unary = gateway_channel.unary_unary(_GATEWAY_GENERATE, request_serializer=None, response_deserializer=None)
    stream = gateway_channel.unary_stream(_GATEWAY_STREAM, request_serializer=None, response_deserializer=None)
    for case, (raw, expected) in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(raw, timeout=30)
        _assert_clear_status(err.value, expected, f"unary {case}")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _chunk in stream(raw, timeout=30):
                pass
        _assert_clear_status(err.value, expected, f"stream {case}")
    assert not cluster.failed
    await _valid_gateway_call(gateway_channel)


async def test_gateway_answers_an_expired_deadline_with_deadline_exceeded(gateway_channel, cluster) -> None:
    unary = gateway_channel.unary_unary(_GATEWAY_GENERATE, request_serializer=None, response_deserializer=None)
    raw = _gateway_request(max_tokens=200).SerializeToString()
    for timeout in (0.000_001, 0.05):  # gone before it is sent; gone while the model works
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(raw, timeout=timeout, metadata=(("cache-control", "no-cache"),))
        _assert_clear_status(err.value, {grpc.StatusCode.DEADLINE_EXCEEDED}, f"timeout {timeout}")
    assert not cluster.failed
    await _valid_gateway_call(gateway_channel)


# ---- worker ----------------------------------------------------------------------------------


def _item(**overrides) -> worker_pb2.WorkItem:
    fields = dict(
        request_id=f"malformed-{uuid.uuid4().hex[:12]}",
        prompt="Say hello.",
        params=worker_pb2.SamplingParams(max_new_tokens=3, temperature=0),
        deadline_unix=time.time() + 120,
    )
    fields.update(overrides)
    return worker_pb2.WorkItem(**fields)


async def _worker_events(channel: grpc.aio.Channel, raw: bytes, timeout: float = 60) -> list[worker_pb2.GenerateEvent]:
    generate = channel.unary_stream(
        _WORKER_GENERATE, request_serializer=None, response_deserializer=worker_pb2.GenerateEvent.FromString
    )
    return [event async for event in generate(raw, timeout=timeout)]


async def _valid_worker_call(channel: grpc.aio.Channel) -> None:
    events = await _worker_events(channel, worker_pb2.GenerateRequest(items=[_item()]).SerializeToString())
    assert events[-1].WhichOneof("event") == "finished", events[-1]
    assert events[-1].finished.completion_tokens > 0


async def test_worker_refuses_bytes_that_are_not_protobuf(worker_channel, cluster) -> None:
    stream = worker_channel.unary_stream(_WORKER_GENERATE, request_serializer=None, response_deserializer=None)
    cancel = worker_channel.unary_unary(_WORKER_CANCEL, request_serializer=None, response_deserializer=None)
    for case, raw in _NOT_PROTOBUF.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _event in stream(raw, timeout=30):
                pass
        _assert_clear_status(err.value, {grpc.StatusCode.INVALID_ARGUMENT}, f"Generate {case}")
        assert "GenerateRequest" in err.value.details()
        if case == "invalid-utf8-string":
            raw = b"\x0a\x02\xff\xfe"  # CancelRequest's string field is field 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cancel(raw, timeout=30)
        _assert_clear_status(err.value, {grpc.StatusCode.INVALID_ARGUMENT}, f"Cancel {case}")
    assert not cluster.failed
    await _valid_worker_call(worker_channel)


async def test_worker_refuses_an_unusable_call_with_a_status(worker_channel, cluster) -> None:
    calls = {
        "no items": worker_pb2.GenerateRequest(),
        "item without request id": worker_pb2.GenerateRequest(items=[_item(request_id="")]),
        "duplicate request ids": worker_pb2.GenerateRequest(items=[_item(request_id="dup"), _item(request_id="dup")]),
    }
    for case, request in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _worker_events(worker_channel, request.SerializeToString())
        _assert_clear_status(err.value, {grpc.StatusCode.INVALID_ARGUMENT}, case)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _worker_events(worker_channel, worker_pb2.GenerateRequest(items=[_item()]).SerializeToString(), timeout=0.000_001)
    _assert_clear_status(err.value, {grpc.StatusCode.DEADLINE_EXCEEDED}, "expired call deadline")
    huge = worker_pb2.GenerateRequest(items=[_item(prompt="x" * 5_000_000)]).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _worker_events(worker_channel, huge)
    _assert_clear_status(err.value, {grpc.StatusCode.RESOURCE_EXHAUSTED}, "message beyond gRPC's limit")
    assert not cluster.failed
    await _valid_worker_call(worker_channel)


async def test_worker_fails_bad_items_on_the_stream_and_serves_the_good_one(worker_channel, cluster) -> None:
    bad = {
        "no prompt, no messages": (_item(prompt=""), worker_pb2.FAILURE_CODE_INVALID_REQUEST),
        "max_new_tokens 0": (_item(params=worker_pb2.SamplingParams(max_new_tokens=0)), worker_pb2.FAILURE_CODE_INVALID_REQUEST),
        "huge max_new_tokens": (
            _item(params=worker_pb2.SamplingParams(max_new_tokens=4_000_000_000)),
            worker_pb2.FAILURE_CODE_INVALID_REQUEST,
        ),
        "negative temperature": (
            _item(params=worker_pb2.SamplingParams(max_new_tokens=3, temperature=-1)),
            worker_pb2.FAILURE_CODE_INVALID_REQUEST,
        ),
        "temperature NaN": (
            _item(params=worker_pb2.SamplingParams(max_new_tokens=3, temperature=float("nan"))),
            worker_pb2.FAILURE_CODE_INVALID_REQUEST,
        ),
        "top_p above 1": (
            _item(params=worker_pb2.SamplingParams(max_new_tokens=3, top_p=1.5)),
            worker_pb2.FAILURE_CODE_INVALID_REQUEST,
        ),
        "prompt beyond max_model_len": (_item(prompt="hello " * 5_000), worker_pb2.FAILURE_CODE_INVALID_REQUEST),
        "deadline already passed": (_item(deadline_unix=time.time() - 60), worker_pb2.FAILURE_CODE_DEADLINE_EXCEEDED),
    }
    good = _item()
    by_id = {item.request_id: (case, code) for case, (item, code) in bad.items()}
    request = worker_pb2.GenerateRequest(items=[item for item, _ in bad.values()] + [good])
    events = await _worker_events(worker_channel, request.SerializeToString())
    ended = {e.request_id: e for e in events if e.WhichOneof("event") in ("finished", "failed")}
    assert set(ended) == set(by_id) | {good.request_id}
    for request_id, (case, code) in by_id.items():
        event = ended[request_id]
        assert event.WhichOneof("event") == "failed", f"{case}: {event}"
        assert event.failed.code == code, f"{case}: {event.failed}"
        assert event.failed.message, case
    assert ended[good.request_id].WhichOneof("event") == "finished"

    # The whole call asks for a model this worker does not serve: every item fails with that reason.
    wrong_model = worker_pb2.GenerateRequest(items=[_item()], model="no-such-model")
    events = await _worker_events(worker_channel, wrong_model.SerializeToString())
    assert events[-1].failed.code == worker_pb2.FAILURE_CODE_MODEL_NOT_FOUND and events[-1].failed.message
    assert not cluster.failed
    await _valid_worker_call(worker_channel)
