"""End-to-end tests of the HTTP API: a real gateway (uvicorn in-process) on the real Tansu broker and
Redis, answered by the fake batcher, driven by the official `openai` client and by raw HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI

from shared.worker_registry import WorkerInfo, WorkerRegistry

from services.gateway.service import GatewayService

from tests.services.gateway.conftest import ANSWER, ANSWER_TOKENS, FAKE_MODEL, FakeBatcher, fake_logprobs

pytestmark = pytest.mark.usefixtures("registered_worker")


def client_for(service: GatewayService) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{service.http_port}/v1", max_retries=0)


def http_for(service: GatewayService) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30)


async def test_chat_completion(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        response = await client.chat.completions.with_raw_response.create(
            model=FAKE_MODEL,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
            max_tokens=50,
            temperature=0.5,
            top_p=0.9,
            stop=["\n\n"],
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.25,
            logit_bias={"42": -100},
            extra_body={"top_k": 40, "repetition_penalty": 1.1, "priority": "high"},
        )
    completion = response.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == FAKE_MODEL
    assert completion.usage is not None and completion.usage.completion_tokens == len(ANSWER_TOKENS)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert response.headers["x-request-id"] == completion.id
    assert completion.id.startswith("chatcmpl-")
    assert response.headers["x-lgc-cache"] == "miss"

    (sent,) = fake_batcher.requests
    assert sent.id == completion.id
    assert sent.priority.value == "high"
    assert sent.reply_to == service.reply_topic
    assert sent.params.max_new_tokens == 50 and sent.params.temperature == 0.5 and sent.params.top_p == 0.9
    assert sent.params.top_k == 40 and sent.params.repetition_penalty == 1.1 and sent.params.seed == 7
    assert (sent.params.presence_penalty, sent.params.frequency_penalty) == (0.5, 0.25)
    assert sent.params.logit_bias == {42: -100.0}
    assert sent.params.stop == ("\n\n",)
    assert [m.role for m in sent.messages or ()] == ["system", "user"]
    assert sent.deadline is not None and sent.deadline > sent.created_at


async def test_chat_stream_with_usage(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        stream = await client.chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == ANSWER
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(ANSWER_TOKENS)
    assert all(c.usage is None for c in chunks[:-1])
    assert fake_batcher.requests[0].stream is True


async def test_raw_sse_shape_ends_with_done(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with http_for(service) as http:
        async with http.stream(
            "POST", "/v1/completions", json={"prompt": "Once", "stream": True, "max_tokens": 3}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            body = (await response.aread()).decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "usage" not in chunks[0]  # only with include_usage
    assert "".join(c["choices"][0]["text"] for c in chunks) == "".join(ANSWER_TOKENS[:3])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert response.headers["x-request-id"].startswith("cmpl-")


async def test_text_completion_and_default_model(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        completion = await client.completions.create(model="", prompt=["Once upon a time"], max_tokens=2)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "".join(ANSWER_TOKENS[:2])
    assert completion.choices[0].finish_reason == "length"
    assert completion.model == FAKE_MODEL  # "" means the first served model
    assert fake_batcher.requests[0].prompt == "Once upon a time"


async def test_streamed_completion_with_usage(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        stream = await client.completions.create(
            model=FAKE_MODEL, prompt="Once", stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ANSWER
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_models_and_ops_routes(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == [FAKE_MODEL]
        assert models.data[0].object == "model"
        one = await client.models.retrieve(FAKE_MODEL)
        assert one.id == FAKE_MODEL
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
    async with http_for(service) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ready")).json() == {"ready": True}
        await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        metrics = (await http.get("/metrics")).text
        assert 'lgc_gateway_requests_total{endpoint="chat",outcome="ok",priority="normal"} 1.0' in metrics
        assert "lgc_gateway_inflight_requests 0.0" in metrics
        schema = (await http.get("/openapi.json")).json()
        assert "/v1/chat/completions" in schema["paths"]
        post = schema["paths"]["/v1/chat/completions"]["post"]
        assert "422" not in post["responses"] and "400" in post["responses"]
        assert "requestBody" in post
        # The API key scheme is declared, on the /v1 routes only.
        assert schema["components"]["securitySchemes"]["ApiKey"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <API key>`.",
        }
        assert post["security"] == [{"ApiKey": []}]
        assert schema["paths"]["/v1/models"]["get"]["security"] == [{"ApiKey": []}]
        open_routes = [p for p in schema["paths"] if not p.startswith("/v1/")]
        assert all("security" not in op for p in open_routes for op in schema["paths"][p].values())


async def test_refusals_are_openai_errors(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "f"}}]
            )
        assert bad.value.status_code == 400
        assert bad.value.body["param"] == "tools"  # type: ignore[index]
        assert "not supported" in bad.value.body["message"]  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            # Above gateway_max_choices (16 by default).
            await client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], n=17)
        assert bad.value.body["param"] == "n"  # type: ignore[index]
        assert "at most 16" in bad.value.body["message"]  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.completions.create(model=FAKE_MODEL, prompt="hi", n=0)
        assert bad.value.body["param"] == "n"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], top_logprobs=2
            )
        assert bad.value.body["param"] == "top_logprobs"  # type: ignore[index]
        assert "'logprobs' must be true" in bad.value.body["message"]  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.completions.create(model=FAKE_MODEL, prompt="hi", logprobs=21)
        assert bad.value.body["param"] == "logprobs"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    async with http_for(service) as http:
        broken = await http.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["type"] == "invalid_request_error"
        assert broken.json()["error"]["code"] == "invalid_json"
        empty = await http.post("/v1/chat/completions", json={"messages": []})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
        wrong_type = await http.post("/v1/completions", json={"prompt": "x", "temperature": "hot"})
        assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "temperature"
        unknown = await http.post("/v1/completions", json={"prompt": "x", "frobnicate": 1})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "frobnicate"
        not_object = await http.post("/v1/completions", json=[1, 2])
        assert not_object.status_code == 400 and "JSON object" in not_object.json()["error"]["message"]
        no_body = await http.post("/v1/completions")
        assert no_body.status_code == 400 and no_body.json()["error"]["code"] == "missing_body"
        not_json = await http.post("/v1/completions", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"})
        assert not_json.status_code == 400 and "Content-Type" in not_json.json()["error"]["message"]
        wrong_method = await http.get("/v1/completions")
        assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
        bad_priority = await http.post("/v1/completions", json={"prompt": "x"}, headers={"X-LGC-Priority": "urgent"})
        assert bad_priority.status_code == 400 and bad_priority.json()["error"]["param"] == "X-LGC-Priority"
        # Lone surrogates are valid JSON escapes but not encodable text: a clear 4xx, never a 500.
        surrogate_model = await http.post(
            "/v1/completions", content=b'{"model": "m\\ud800", "prompt": "x"}', headers={"content-type": "application/json"}
        )
        assert surrogate_model.status_code == 400 and surrogate_model.json()["error"]["param"] == "model"
        surrogate_prompt = await http.post(
            "/v1/chat/completions",
            content=b'{"messages": [{"role": "user", "content": "a\\ud800"}]}',
            headers={"content-type": "application/json"},
        )
        assert surrogate_prompt.status_code == 400
        deep = await http.post("/v1/completions", content=b"[" * 100_000, headers={"content-type": "application/json"})
        assert deep.status_code == 400
        no_route = await http.get("/v1/nothing")
        assert no_route.status_code == 404 and "error" in no_route.json()
    assert fake_batcher.requests == []  # nothing refused was queued


async def test_body_too_large_is_413(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_max_body_bytes=2_048)
    async with client_for(service) as client:
        with pytest.raises(openai.APIStatusError) as too_large:
            await client.completions.create(model=FAKE_MODEL, prompt="x" * 5_000)
    assert too_large.value.status_code == 413
    assert too_large.value.body["code"] == "request_too_large"  # type: ignore[index]

    async def chunks():
        for _ in range(10):
            yield b" " * 1_000

    async with http_for(service) as http:
        chunked = await http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "request_too_large"


async def test_prompt_too_long_is_400(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_max_prompt_chars=100)
    async with client_for(service) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.completions.create(model=FAKE_MODEL, prompt="x" * 101)
    assert bad.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


async def test_inflight_bound_is_429_and_disconnect_cancels(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_max_inflight=1, gateway_retry_after_s=3)
    async with client_for(service) as client:
        held = asyncio.create_task(
            client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "[hold]"}])
        )
        (request,) = await fake_batcher.wait_for_requests(1)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}])
        assert limited.value.response.headers["retry-after"] == "3"
        assert limited.value.body["type"] == "rate_limit_error"  # type: ignore[index]
        held.cancel()  # the client goes away: the gateway must cancel the request in the cluster
        await asyncio.gather(held, return_exceptions=True)
    cancel = await fake_batcher.wait_for_cancel(request.id)
    assert cancel.reason == "client_disconnected"
    # The permit is given back: the next request is admitted.
    async with client_for(service) as client:
        ok = await client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content == ANSWER


async def test_disconnect_while_waiting_for_first_token_cancels(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with http_for(service) as http:
        waiting = asyncio.create_task(http.post("/v1/completions", json={"prompt": "[hold]", "stream": True}))
        (request,) = await fake_batcher.wait_for_requests(1)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    assert (await fake_batcher.wait_for_cancel(request.id)).reason == "client_disconnected"


async def test_disconnect_mid_stream_cancels(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with http_for(service) as http:
        async with http.stream("POST", "/v1/completions", json={"prompt": "[stall]", "stream": True}) as response:
            assert response.status_code == 200
            first = await anext(response.aiter_lines())
            assert json.loads(first.removeprefix("data: "))["choices"][0]["text"] == ANSWER_TOKENS[0]
        # Leaving the block closes the connection mid-stream.
    (request,) = fake_batcher.requests
    assert (await fake_batcher.wait_for_cancel(request.id)).reason == "client_disconnected"
    async with http_for(service) as http:
        metrics = (await http.get("/metrics")).text
    assert 'lgc_gateway_requests_total{endpoint="completions",outcome="disconnected",priority="normal"} 1.0' in metrics


async def test_timeout_is_504_and_cancels(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_request_timeout_s=0.5)
    async with client_for(service) as client:
        with pytest.raises(openai.APIStatusError) as timed_out:
            await client.completions.create(model=FAKE_MODEL, prompt="[hold]")
    assert timed_out.value.status_code == 504
    request = fake_batcher.requests[0]
    assert (await fake_batcher.wait_for_cancel(request.id)).reason == "timeout"


@pytest.mark.parametrize(
    ("code", "status", "retry_after"),
    [
        ("overloaded", 503, True),
        ("deadline_exceeded", 504, False),
        ("invalid_request", 400, False),
        ("worker_failed", 502, False),
        ("cancelled", 400, False),
    ],
)
async def test_reply_errors_map_to_status(start_gateway, fake_batcher: FakeBatcher, code, status, retry_after) -> None:
    service = await start_gateway()
    async with http_for(service) as http:
        response = await http.post("/v1/completions", json={"prompt": f"[error:{code}]"})
        streamed = await http.post("/v1/completions", json={"prompt": f"[late][error:{code}]", "stream": True})
        early = await http.post("/v1/completions", json={"prompt": f"[error:{code}]", "stream": True})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert ("retry-after" in response.headers) is retry_after
    # Streaming: one delta went out first, so the error arrives inside the stream.
    assert streamed.status_code == 200
    events = [e for e in streamed.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == code
    # Streaming, but the error came before any token: a real status, not a stream.
    assert early.status_code == status
    assert early.json()["error"]["code"] == code


async def test_refusal_of_streaming_request_gets_status(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        with pytest.raises(openai.BadRequestError):
            stream = await client.chat.completions.create(
                model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=99_999
            )
            async for _ in stream:
                pass


async def test_duplicates_are_not_shown_to_clients(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        stream = await client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "[dup]"}], stream=True
        )
        content = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert content == ANSWER


async def test_no_workers_is_503(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(topic_prefix="tnoworkers" + fake_batcher.settings.topic_prefix[:10])
    async with client_for(service) as client:
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client.completions.create(model=FAKE_MODEL, prompt="hi")
    assert unavailable.value.status_code == 503
    assert unavailable.value.body["code"] == "no_workers"  # type: ignore[index]
    assert "retry-after" in unavailable.value.response.headers


async def test_model_names_with_slashes(start_gateway, fake_batcher: FakeBatcher, cluster_settings) -> None:
    redis = aioredis.from_url(cluster_settings.redis_url)
    registry = WorkerRegistry(redis, prefix=cluster_settings.topic_prefix, ttl_s=60)
    await registry.register(
        WorkerInfo(worker_id="w-slash", address="127.0.0.1:2", model="org/model-x", backend="simulated", capacity=1)
    )
    try:
        service = await start_gateway()
        async with client_for(service) as client:
            assert (await client.models.retrieve("org/model-x")).id == "org/model-x"
            completion = await client.completions.create(model="org/model-x", prompt="hi", max_tokens=1)
        assert completion.model == "org/model-x"
    finally:
        await registry.deregister("w-slash")
        await redis.aclose()


# ---- log probabilities -----------------------------------------------------------------------


async def test_chat_completion_with_logprobs(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        response = await client.chat.completions.with_raw_response.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0, logprobs=True, top_logprobs=2
        )
        plain = await client.chat.completions.create(model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}])
    completion = response.parse()
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == list(ANSWER_TOKENS)
    expected = [fake_logprobs(i, t, 0).logprob for i, t in enumerate(ANSWER_TOKENS)]
    assert [t.logprob for t in logprobs.content] == expected
    assert logprobs.content[1].bytes == list(b" from")
    assert [[a.token for a in t.top_logprobs] for t in logprobs.content[:2]] == [["Hello", "alt1"], [" from", "alt1"]]
    assert completion.choices[0].message.content == ANSWER
    # Cached answers have no log probabilities: a deterministic request still bypasses the caches.
    assert response.headers["x-lgc-cache"] == "bypass"
    assert plain.choices[0].logprobs is None  # not asked for: null
    sent = fake_batcher.requests[0]
    assert (sent.params.logprobs, sent.params.top_logprobs) == (True, 2)


async def test_chat_stream_with_logprobs(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        stream = await client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, logprobs=True
        )
        chunks = [chunk async for chunk in stream]
    with_tokens = [c for c in chunks if c.choices and c.choices[0].logprobs is not None]
    assert [c.choices[0].delta.content for c in with_tokens] == list(ANSWER_TOKENS)
    assert [[t.token for t in c.choices[0].logprobs.content or ()] for c in with_tokens] == [[t] for t in ANSWER_TOKENS]
    assert all(t.top_logprobs == [] for c in with_tokens for t in c.choices[0].logprobs.content or ())
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].logprobs is None


async def test_text_completion_with_logprobs(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        completion = await client.completions.create(model=FAKE_MODEL, prompt="Once", max_tokens=3, logprobs=2)
        stream = await client.completions.create(model=FAKE_MODEL, prompt="Once", stream=True, logprobs=0)
        chunks = [chunk async for chunk in stream]
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == list(ANSWER_TOKENS[:3]) and completion.choices[0].text == "".join(ANSWER_TOKENS[:3])
    assert logprobs.text_offset == [0, 5, 10]  # "Hello", " from", " the"
    assert logprobs.top_logprobs is not None and logprobs.top_logprobs[0] == {"Hello": -0.1, "alt1": -1.1}
    sent = fake_batcher.requests[0]
    assert (sent.params.logprobs, sent.params.top_logprobs) == (True, 2)
    # Streamed: each chunk's offsets continue where the previous chunk's tokens ended.
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    offsets = [o for lp in streamed for o in lp.text_offset or ()]
    starts = [sum(len(t) for t in ANSWER_TOKENS[:i]) for i in range(len(ANSWER_TOKENS))]
    assert offsets == starts
    assert fake_batcher.requests[1].params.top_logprobs == 0 and fake_batcher.requests[1].params.logprobs


# ---- several choices (n > 1) -------------------------------------------------------------------


def sse_chunks(body: str) -> list[dict]:
    """The JSON chunks of a raw SSE body, checking that it ends with exactly one `[DONE]`."""
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


async def test_chat_with_several_choices(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        response = await client.chat.completions.with_raw_response.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "Say hello twice"}],
            n=3,
            temperature=0.9,
            seed=5,
            max_tokens=50,
        )
        unseeded = await client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "again"}], n=2
        )
    completion = response.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content == ANSWER and c.finish_reason == "stop" for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 3  # the prompt once ("Say hello twice")
    assert completion.usage.completion_tokens == 3 * len(ANSWER_TOKENS)  # every choice's tokens
    assert response.headers["x-lgc-cache"] == "bypass"
    sent = sorted(fake_batcher.requests[:3], key=lambda r: r.id)
    assert [r.id for r in sent] == [f"{completion.id}.{i}" for i in range(3)]
    assert [r.params.seed for r in sent] == [5, 6, 7]
    assert all(r.params.temperature == 0.9 and r.params.max_new_tokens == 50 for r in sent)
    assert len(unseeded.choices) == 2
    assert [r.params.seed for r in fake_batcher.requests[3:]] == [None, None]


async def test_text_completion_with_several_choices(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        completion = await client.completions.create(model=FAKE_MODEL, prompt="Once", n=2, max_tokens=2, logprobs=1)
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (i, "".join(ANSWER_TOKENS[:2]), "length") for i in range(2)
    ]
    assert all(c.logprobs is not None and c.logprobs.tokens == list(ANSWER_TOKENS[:2]) for c in completion.choices)
    assert completion.usage is not None and completion.usage.completion_tokens == 4


async def test_chat_stream_with_several_choices(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    body = {
        "model": FAKE_MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http_for(service) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.headers["x-lgc-cache"] == "bypass"
    chunks = sse_chunks(response.text)
    assert len({c["id"] for c in chunks}) == 1
    with_choices = [c["choices"][0] for c in chunks if c["choices"]]
    # One opening role chunk per choice, before any content.
    roles = [(i, c["index"]) for i, c in enumerate(with_choices) if c["delta"].get("role") == "assistant"]
    assert [index for _, index in roles] == [0, 1] and [at for at, _ in roles] == [0, 1]
    for index in (0, 1):
        own = [c for c in with_choices if c["index"] == index]
        assert "".join(c["delta"].get("content") or "" for c in own) == ANSWER
        assert [c["finish_reason"] for c in own if c["finish_reason"]] == ["stop"]
        assert own[-1]["finish_reason"] == "stop"  # its last chunk
    # One usage chunk, at the end, for both choices.
    assert [c for c in chunks if not c["choices"]] == [chunks[-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 2 * len(ANSWER_TOKENS)
    assert chunks[-1]["usage"]["prompt_tokens"] == 2
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_completion_stream_with_several_choices(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        stream = await client.completions.create(model=FAKE_MODEL, prompt="Once", n=3, stream=True, logprobs=0)
        chunks = [chunk async for chunk in stream]
    for index in range(3):
        own = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(c.text for c in own) == ANSWER
        # Each choice's text offsets start at 0 and continue across its own chunks only.
        offsets = [o for c in own if c.logprobs for o in c.logprobs.text_offset or ()]
        assert offsets == [sum(len(t) for t in ANSWER_TOKENS[:i]) for i in range(len(ANSWER_TOKENS))]


async def test_choices_above_the_gateways_limit_are_400(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_max_choices=2)
    async with http_for(service) as http:
        refused = await http.post("/v1/completions", json={"prompt": "x", "n": 3})
        allowed = await http.post("/v1/completions", json={"prompt": "x", "n": 2})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
    assert "at most 2" in refused.json()["error"]["message"]
    assert allowed.status_code == 200 and len(allowed.json()["choices"]) == 2
    assert len(fake_batcher.requests) == 2  # only the allowed request's choices were queued


async def test_a_failing_choice_fails_the_answer_and_cancels_its_siblings(
    start_gateway, fake_batcher: FakeBatcher
) -> None:
    service = await start_gateway()
    async with http_for(service) as http:
        whole = await http.post("/v1/completions", json={"prompt": "[fail-choice:1][hold]", "n": 3})
    assert whole.status_code == 502 and whole.json()["error"]["code"] == "worker_failed"
    request_id = whole.headers["x-request-id"]
    for index in (0, 2):
        cancel = await fake_batcher.wait_for_cancel(f"{request_id}.{index}")
        assert cancel.reason == "client_disconnected"
    assert f"{request_id}.1" not in fake_batcher.cancels  # it ended on its own


async def test_a_failing_choice_ends_the_stream_with_the_error(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    body = {"prompt": "[fail-choice:1][stall]", "n": 3, "stream": True}
    async with http_for(service) as http:
        streamed = await http.post("/v1/completions", json=body)
    # The stalled choices' first tokens came first: the stream had started.
    assert streamed.status_code == 200
    chunks = sse_chunks(streamed.text)
    assert chunks[-1]["error"]["code"] == "worker_failed"
    assert {c["choices"][0]["index"] for c in chunks[:-1]} == {0, 2}
    request_id = streamed.headers["x-request-id"]
    for index in (0, 2):
        await fake_batcher.wait_for_cancel(f"{request_id}.{index}")


async def test_disconnect_cancels_every_choice(start_gateway, fake_batcher: FakeBatcher) -> None:
    # One request of three choices holds one in-flight permit, whatever its n.
    service = await start_gateway(gateway_max_inflight=1)
    async with http_for(service) as http:
        waiting = asyncio.create_task(http.post("/v1/completions", json={"prompt": "[hold]", "n": 3}))
        requests = list(await fake_batcher.wait_for_requests(3))
        refused = await http.post("/v1/completions", json={"prompt": "hi"})
        assert refused.status_code == 429
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    for request in requests:
        assert (await fake_batcher.wait_for_cancel(request.id)).reason == "client_disconnected"
    async with http_for(service) as http:  # the permit is back
        assert (await http.post("/v1/completions", json={"prompt": "hi", "n": 2})).status_code == 200


async def test_disconnect_mid_stream_cancels_every_choice(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with http_for(service) as http:
        body = {"prompt": "[stall]", "n": 2, "stream": True}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            first = await anext(response.aiter_lines())
            assert json.loads(first.removeprefix("data: "))["choices"][0]["text"] == ANSWER_TOKENS[0]
    for request in fake_batcher.requests:
        assert (await fake_batcher.wait_for_cancel(request.id)).reason == "client_disconnected"
    assert len(fake_batcher.requests) == 2


async def test_several_choices_bypass_the_caches(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    body = {"prompt": "cache me", "temperature": 0}  # deterministic: cacheable with n = 1
    async with http_for(service) as http:
        several = await http.post("/v1/completions", json={**body, "n": 2})
        assert several.headers["x-lgc-cache"] == "bypass"
        # Nothing was stored: the first single-choice request is a miss...
        single = await http.post("/v1/completions", json=body)
        assert single.headers["x-lgc-cache"] == "miss"
        for _ in range(50):  # ...and its answer is stored in the background
            hit = await http.post("/v1/completions", json=body)
            if hit.headers["x-lgc-cache"] == "hit-exact":
                break
            await asyncio.sleep(0.05)
        assert hit.headers["x-lgc-cache"] == "hit-exact"
        queued = len(fake_batcher.requests)
        again = await http.post("/v1/completions", json={**body, "n": 2})
    # A cached answer is one choice: n = 2 is never answered from it.
    assert again.headers["x-lgc-cache"] == "bypass" and len(again.json()["choices"]) == 2
    assert len(fake_batcher.requests) == queued + 2


async def test_several_prompts_make_n_choices_each(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        completion = await client.completions.create(
            model=FAKE_MODEL, prompt=["one two", "three"], n=2, max_tokens=2, seed=7, echo=True
        )
    # Choice i * n + j is choice j of prompt i, its text after its own prompt (echo).
    expected = ["one two", "one two", "three", "three"]
    assert [(c.index, c.text) for c in completion.choices] == [
        (i, prompt + "".join(ANSWER_TOKENS[:2])) for i, prompt in enumerate(expected)
    ]
    queued = sorted(fake_batcher.requests, key=lambda r: r.id)
    assert [r.id.rsplit(".", 1)[1] for r in queued] == ["0", "1", "2", "3"]
    assert [r.prompt for r in queued] == expected
    assert [r.params.seed for r in queued] == [7, 8, 7, 8]
    # Each prompt once (the fake batcher counts words: 2 + 1), every choice's completion.
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 8)


async def test_several_prompts_stream_with_echo_first(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    body = {"prompt": ["alpha", "beta gamma"], "stream": True, "echo": True, "stream_options": {"include_usage": True}}
    async with http_for(service) as http:
        response = await http.post("/v1/completions", json=body)
    assert response.status_code == 200
    chunks = sse_chunks(response.text)
    with_choices = [c["choices"][0] for c in chunks if c["choices"]]
    for index, prompt in enumerate(["alpha", "beta gamma"]):
        own = [c for c in with_choices if c["index"] == index]
        assert own[0]["text"] == prompt and own[0]["finish_reason"] is None  # the echo comes first
        assert "".join(c["text"] for c in own) == prompt + ANSWER
        assert own[-1]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 3


async def test_echo_of_one_prompt_whole_and_streamed(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        whole = await client.completions.create(model=FAKE_MODEL, prompt="Once", echo=True, max_tokens=3)
        stream = await client.completions.create(model=FAKE_MODEL, prompt="Once", echo=True, stream=True)
        chunks = [chunk async for chunk in stream]
    assert whole.choices[0].text == "Once" + "".join(ANSWER_TOKENS[:3])
    assert chunks[0].choices[0].text == "Once"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Once" + ANSWER
    # The cluster only ever sees and returns the generated text.
    assert all(r.prompt == "Once" for r in fake_batcher.requests)


async def test_prompts_of_token_ids_go_to_the_cluster_as_ids_and_echo_decoded(
    start_gateway, fake_batcher: FakeBatcher
) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        whole = await client.completions.create(model=FAKE_MODEL, prompt=[4, 2], echo=True, max_tokens=2)
        stream = await client.completions.create(model=FAKE_MODEL, prompt=[4, 2], echo=True, stream=True)
        chunks = [chunk async for chunk in stream]
        several = await client.completions.create(
            model=FAKE_MODEL, prompt=[[7], [8, 9]], echo=True, logprobs=0, max_tokens=1
        )
        plain = await client.completions.create(model=FAKE_MODEL, prompt=[4, 2], max_tokens=2)
    queued = [(r.prompt, r.prompt_token_ids) for r in fake_batcher.requests]
    assert queued[:2] == [(None, (4, 2))] * 2
    # The echo is the worker's decoding (the fake's: token i is `w<i>`), whole and streamed.
    assert whole.choices[0].text == "w4 w2" + "".join(ANSWER_TOKENS[:2])
    assert chunks[0].choices[0].text == "w4 w2"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "w4 w2" + ANSWER
    assert [c.text for c in several.choices] == ["w7" + ANSWER_TOKENS[0], "w8 w9" + ANSWER_TOKENS[0]]
    assert several.choices[1].logprobs is not None and several.choices[1].logprobs.tokens[:2] == ["w8", " w9"]
    assert plain.choices[0].text == "".join(ANSWER_TOKENS[:2])  # no echo: the decoding is not shown


async def test_prompt_logprobs_as_vllm_gives_them(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with http_for(service) as http:
        body = {"prompt": "Say it", "prompt_logprobs": 2, "max_tokens": 1}
        completion = await http.post("/v1/completions", json=body)
        echoed_too = await http.post("/v1/completions", json={**body, "echo": True, "logprobs": 0})
        messages = [{"role": "user", "content": "a b"}]
        chat = await http.post("/v1/chat/completions", json={"messages": messages, "prompt_logprobs": 0})
        streamed = await http.post("/v1/completions", json={"prompt": "x", "prompt_logprobs": 0, "stream": True})
    assert [r.params.prompt_logprobs for r in fake_batcher.requests] == [2, 2, 0]
    choice = completion.json()["choices"][0]
    # The fake's prompt: "Say" then " it" (id 5001), the most likely there, then its alternative.
    assert choice["prompt_logprobs"] == [
        None,
        {
            "5001": {"logprob": -0.2, "rank": 1, "decoded_token": " it"},
            "1001": {"logprob": -1.2, "rank": 2, "decoded_token": "alt1"},
        },
    ]
    assert choice["logprobs"] is None and choice["text"] == ANSWER_TOKENS[0]  # no echo, no `logprobs`
    # With echo and logprobs 0, the legacy listing keeps its own number of alternatives.
    listed = echoed_too.json()["choices"][0]
    assert listed["logprobs"]["top_logprobs"][1] == {" it": -0.2} and len(listed["prompt_logprobs"][1]) == 2
    assert chat.json()["prompt_logprobs"][1] == {"5001": {"logprob": -0.2, "rank": 1, "decoded_token": " b"}}
    assert completion.headers["x-lgc-cache"] == "bypass"
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"


async def test_token_ids_as_vllm_gives_them_whole_and_streamed(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    messages = [{"role": "user", "content": "a b c"}]
    answer_ids = [100 + i for i in range(len(ANSWER_TOKENS))]  # the fake's: token i is id 100 + i
    async with http_for(service) as http:
        chat = await http.post("/v1/chat/completions", json={"messages": messages, "return_token_ids": True})
        completion = await http.post(
            "/v1/completions", json={"prompt": [4, 2], "return_token_ids": True, "n": 2, "max_tokens": 2}
        )
        chat_stream = await http.post(
            "/v1/chat/completions", json={"messages": messages, "return_token_ids": True, "stream": True}
        )
        text_stream = await http.post(
            "/v1/completions", json={"prompt": "x y", "return_token_ids": True, "stream": True, "echo": True}
        )
        plain = await http.post("/v1/chat/completions", json={"messages": messages, "temperature": 0})
    assert [r.params.return_token_ids for r in fake_batcher.requests] == [True, True, True, True, True, False]
    # Whole: the chat answer's prompt ids at the top level, each choice's own ids on it.
    answer = chat.json()
    assert (answer["prompt_token_ids"], answer["choices"][0]["token_ids"]) == ([1, 2, 3], answer_ids)
    assert chat.headers["x-lgc-cache"] == "bypass"
    for choice in completion.json()["choices"]:
        assert (choice["prompt_token_ids"], choice["token_ids"]) == ([4, 2], answer_ids[:2])
    # Streamed chat: the role chunk carries the prompt's ids; every content chunk its own.
    chunks = sse_chunks(chat_stream.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["prompt_token_ids"] == [1, 2, 3]
    assert all("prompt_token_ids" not in c for c in chunks[1:])
    assert [t for c in chunks[1:] for t in c["choices"][0]["token_ids"]] == answer_ids
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"][0]["token_ids"] == []
    # Streamed completion: the first chunk (here the echo) carries the prompt's ids.
    text_chunks = [c["choices"][0] for c in sse_chunks(text_stream.text)]
    assert (text_chunks[0]["text"], text_chunks[0]["prompt_token_ids"]) == ("x y", [1, 2])
    assert all("prompt_token_ids" not in c for c in text_chunks[1:])
    assert [t for c in text_chunks for t in c["token_ids"]] == answer_ids
    # Not asked for: absent, as in vLLM's answers.
    assert "prompt_token_ids" not in plain.json() and "token_ids" not in plain.json()["choices"][0]


async def test_prompts_of_token_ids_bypass_the_caches(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    body = {"model": FAKE_MODEL, "prompt": [4, 2], "temperature": 0, "max_tokens": 2}
    async with http_for(service) as http:
        first = await http.post("/v1/completions", json=body)
        again = await http.post("/v1/completions", json=body)
        bad = await http.post("/v1/completions", json={**body, "prompt": [4, -1]})
    assert [first.headers["x-lgc-cache"], again.headers["x-lgc-cache"]] == ["bypass", "bypass"]
    assert len(fake_batcher.requests) == 2
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
    assert "token ids are integers from 0" in bad.json()["error"]["message"]


async def test_too_many_prompts_times_n_are_400(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway(gateway_max_choices=4)
    async with http_for(service) as http:
        too_many = await http.post("/v1/completions", json={"prompt": ["a", "b", "c"], "n": 2})
        allowed = await http.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "prompt"
    assert "3 prompts with n = 2 make 6" in too_many.json()["error"]["message"]
    assert allowed.status_code == 200 and len(allowed.json()["choices"]) == 4
    assert len(fake_batcher.requests) == 4  # only the allowed request's choices were queued


async def test_echo_with_logprobs_lists_the_prompts_tokens_first(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    async with client_for(service) as client:
        whole = await client.completions.create(
            model=FAKE_MODEL, prompt="Say it twice", echo=True, logprobs=1, max_tokens=2
        )
    assert fake_batcher.requests[0].params.prompt_logprobs == 1
    choice = whole.choices[0]
    assert choice.text == "Say it twice" + "".join(ANSWER_TOKENS[:2])
    lp = choice.logprobs
    assert lp is not None
    assert lp.tokens == ["Say", " it", " twice", *ANSWER_TOKENS[:2]]
    # The prompt's first token has none: nothing comes before it.
    assert lp.token_logprobs is not None and lp.top_logprobs is not None
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == [-0.2, -0.3, -0.1, -0.2]
    assert lp.top_logprobs[1] == {" it": -0.2}
    # Offsets count from the prompt's start, through the answer.
    assert lp.text_offset == [0, 3, 6, 12, 17]


async def test_echo_with_logprobs_streamed_and_with_several_prompts(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    body = {"prompt": ["a b", "c"], "echo": True, "logprobs": 0, "stream": True, "max_tokens": 2}
    async with http_for(service) as http:
        response = await http.post("/v1/completions", json=body)
        whole = await http.post("/v1/completions", json={**body, "stream": False})
    assert response.status_code == 200
    with_choices = [c["choices"][0] for c in sse_chunks(response.text) if c["choices"]]
    for index, prompt, tokens in ((0, "a b", ["a", " b"]), (1, "c", ["c"])):
        own = [c for c in with_choices if c["index"] == index]
        # The echo chunk carries the prompt's log probabilities; the answer's chunks follow.
        assert own[0]["text"] == prompt and own[0]["logprobs"]["tokens"] == tokens
        assert own[0]["logprobs"]["token_logprobs"][0] is None
        assert "".join(c["text"] for c in own) == prompt + "".join(ANSWER_TOKENS[:2])
        streamed_tokens = [t for c in own if c["logprobs"] for t in c["logprobs"]["tokens"]]
        assert streamed_tokens == [*tokens, *ANSWER_TOKENS[:2]]
        offsets = [o for c in own if c["logprobs"] for o in c["logprobs"]["text_offset"]]
        assert offsets == [sum(len(t) for t in streamed_tokens[:i]) for i in range(len(streamed_tokens))]
        assert whole.json()["choices"][index]["logprobs"]["tokens"] == streamed_tokens


async def test_echo_with_max_tokens_0_answers_the_prompt_alone(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    body = {"prompt": ["a b", "c"], "echo": True, "logprobs": 0, "max_tokens": 0}
    async with http_for(service) as http:
        whole = await http.post("/v1/completions", json=body)
        streamed = await http.post("/v1/completions", json={**body, "stream": True})
        refused = await http.post("/v1/completions", json={"prompt": "a", "max_tokens": 0})
    assert whole.status_code == 200, whole.text
    # One token was generated for each (max_new_tokens 1) and none of it is shown.
    assert [r.params.max_new_tokens for r in fake_batcher.requests[:2]] == [1, 1]
    choices = whole.json()["choices"]
    assert [c["text"] for c in choices] == ["a b", "c"]
    assert [c["logprobs"]["tokens"] for c in choices] == [["a", " b"], ["c"]]
    assert choices[0]["logprobs"]["token_logprobs"][0] is None and choices[0]["finish_reason"] == "length"
    chunks = [c["choices"][0] for c in sse_chunks(streamed.text) if c["choices"]]
    for index, prompt in enumerate(["a b", "c"]):
        own = [c for c in chunks if c["index"] == index]
        assert "".join(c["text"] for c in own) == prompt
        tokens = [t for c in own if c["logprobs"] for t in c["logprobs"]["tokens"]]
        assert tokens == choices[index]["logprobs"]["tokens"]
        assert own[-1]["finish_reason"] == "length"
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"
    assert "only for echo" in refused.json()["error"]["message"]


async def test_tokens_named_by_id_as_vllm_names_them(start_gateway, fake_batcher: FakeBatcher) -> None:
    service = await start_gateway()
    messages = [{"role": "user", "content": "hi"}]
    chat_body = {"messages": messages, "logprobs": True, "top_logprobs": 1, "max_tokens": 2}
    async with http_for(service) as http:
        chat = await http.post("/v1/chat/completions", json={**chat_body, "return_tokens_as_token_ids": True})
        body = {"prompt": "a b", "echo": True, "logprobs": 1, "max_tokens": 2, "return_tokens_as_token_ids": True}
        completion = await http.post("/v1/completions", json=body)
        streamed = await http.post("/v1/completions", json={**body, "stream": True})
        plain = await http.post("/v1/chat/completions", json=chat_body)
    # The fake's tokens: answer token i has id i, its alternative "alt1" id 1001; the prompt's
    # words 5000, 5001, ...
    content = chat.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["token_id:0", "token_id:1"]
    assert content[0]["bytes"] == list(b"Hello")  # the token's own bytes, as vLLM gives them
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["token_id:0"]
    listed = completion.json()["choices"][0]["logprobs"]
    assert listed["tokens"] == ["token_id:5000", "token_id:5001", "token_id:0", "token_id:1"]
    assert listed["text_offset"] == [0, 13, 26, 36]  # the names' lengths, as vLLM counts them
    assert listed["top_logprobs"][1] == {"token_id:5001": -0.2}
    assert completion.json()["choices"][0]["text"] == "a b" + "".join(ANSWER_TOKENS[:2])  # the text is text
    chunks = [c["choices"][0] for c in sse_chunks(streamed.text) if c["choices"]]
    assert [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]] == listed["tokens"]
    assert [t["token"] for t in plain.json()["choices"][0]["logprobs"]["content"]] == list(ANSWER_TOKENS[:2])
