"""Blocking guard mode end to end: a real gateway on the real broker and Redis, answered by the fake
batcher, judged by a real guardian check API (the guardian's app served over HTTP in-process, with
small real detectors whose behaviour the test switches)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from services.gateway.service import GatewayService
from services.gateway.tenants import Tenant, TenantSpec
from shared.blocking_tenants import BlockingTenants
from shared.launcher.infra import find_free_port
from shared.protos import gateway_pb2, gateway_pb2_grpc
from shared.records import GuardMode
from tests.guardian_check_server import Guardian, serve_guardian_check
from tests.services.gateway.conftest import ANSWER, ANSWER_TOKENS, FAKE_MODEL, FakeBatcher

pytestmark = pytest.mark.usefixtures("registered_worker")


@pytest.fixture
async def guardian() -> AsyncIterator[Guardian]:
    """The guardian's check API on a free port (no verdict cache: the test switches detectors)."""
    async with serve_guardian_check(block_word="fake", redact_word="batcher") as served:
        yield served


def http_for(service: GatewayService) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30)


def _chat(content: str = "hi", **extra: object) -> dict:
    return {"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def _blocking_gateway(start_gateway, guardian: Guardian, **overrides: object) -> GatewayService:
    return await start_gateway(
        gateway_open_tenant_guard_mode="blocking", gateway_guardian_url=guardian.url, **overrides
    )


def _checks(service: GatewayService, result: str) -> float:
    return service.metrics.guard_checks.labels(result=result)._value.get()


async def test_allowed_and_flagged_answers_are_sent_after_the_check(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    async with http_for(service) as http:
        response = await http.post("/v1/chat/completions", json=_chat())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert _checks(service, "allow") == 1
    assert guardian.metrics.verdicts.labels("allow", "api")._value.get() == 1
    (sent,) = fake_batcher.requests
    assert sent.guard is GuardMode.BLOCKING  # travels with the request (and its result)


async def test_blocked_answers_never_leave_and_are_not_cached(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    guardian.blocker.on = True
    body = _chat("tell me", temperature=0)  # deterministic: cacheable
    async with http_for(service) as http:
        blocked = await http.post("/v1/chat/completions", json=body)
        streamed = await http.post("/v1/chat/completions", json={**body, "stream": True})
        guardian.blocker.on = False
        again = await http.post("/v1/chat/completions", json=body)
    assert blocked.status_code == 400
    error = blocked.json()["error"]
    assert (error["code"], error["type"]) == ("content_filter", "invalid_request_error")
    assert "harm.S1" in error["message"] and ANSWER not in blocked.text
    # A streaming request is refused before its stream starts: a real status, no partial answer.
    assert streamed.status_code == 400 and streamed.json()["error"]["code"] == "content_filter"
    assert ANSWER not in streamed.text
    # The blocked answer was not stored: the next identical request is a miss, judged afresh.
    assert again.status_code == 200 and again.headers["x-lgc-cache"] == "miss"
    assert _checks(service, "block") == 2


async def test_redacted_answers_are_sent_redacted_also_when_streaming(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    guardian.redactor.on = True
    redacted = ANSWER.replace("batcher", "[REDACTED]")
    async with http_for(service) as http:
        whole = await http.post("/v1/chat/completions", json=_chat())
        async with http.stream("POST", "/v1/chat/completions", json=_chat(stream=True)) as stream:
            lines = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
    assert whole.json()["choices"][0]["message"]["content"] == redacted
    chunks = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert [c for c in contents if c] == [redacted]  # one content chunk: the judged answer
    assert lines[-1] == "data: [DONE]"
    assert "batcher" not in "".join(lines)


async def test_cached_answers_are_judged_before_they_are_served(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    body = _chat("cache me", temperature=0)
    async with http_for(service) as http:
        first = await http.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.headers["x-lgc-cache"] == "miss"
        guardian.blocker.on = True  # the guardian now judges that answer unsafe
        for _ in range(50):  # the answer is stored in the background
            hit = await http.post("/v1/chat/completions", json=body)
            if hit.headers.get("x-lgc-cache") != "miss":
                break
            guardian.blocker.on = False
            await http.post("/v1/chat/completions", json=body)
            guardian.blocker.on = True
    assert hit.headers["x-lgc-cache"] == "hit-exact"
    assert hit.status_code == 400 and hit.json()["error"]["code"] == "content_filter"


async def test_without_a_verdict_the_gateway_fails_closed_or_open_as_configured(
    start_gateway, fake_batcher: FakeBatcher
) -> None:
    nowhere = f"http://127.0.0.1:{find_free_port()}"  # nothing listens there
    closed = await start_gateway(
        gateway_open_tenant_guard_mode="blocking", gateway_guardian_url=nowhere, gateway_guard_timeout_s=0.5
    )
    async with http_for(closed) as http:
        refused = await http.post("/v1/chat/completions", json=_chat())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "guardian_unavailable" and ANSWER not in refused.text
    assert _checks(closed, "unavailable") == 1

    opened = await start_gateway(
        gateway_open_tenant_guard_mode="blocking",
        gateway_guardian_url=nowhere,
        gateway_guard_timeout_s=0.5,
        gateway_guard_fail_open=True,
    )
    async with http_for(opened) as http:
        delivered = await http.post("/v1/chat/completions", json=_chat())
    assert delivered.status_code == 200 and delivered.json()["choices"][0]["message"]["content"] == ANSWER
    assert _checks(opened, "failed_open") == 1


async def test_async_tenants_are_not_held_back(start_gateway, fake_batcher: FakeBatcher, guardian: Guardian) -> None:
    service = await start_gateway(gateway_guardian_url=guardian.url)  # default: async
    guardian.blocker.on = True
    async with http_for(service) as http:
        response = await http.post("/v1/chat/completions", json=_chat())
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == ANSWER
    assert guardian.metrics.verdicts.labels("block", "api")._value.get() == 0  # never asked
    assert fake_batcher.requests[0].guard is GuardMode.ASYNC


async def test_grpc_callers_get_the_same_verdict(start_gateway, fake_batcher: FakeBatcher, guardian: Guardian) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    guardian.blocker.on = True
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(
                gateway_pb2.GenerateRequest(model=FAKE_MODEL, messages=[gateway_pb2.ChatMessage(role="user", content="x")]),
                timeout=10,
            )
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "content filter" in (failed.value.details() or "")


def test_tenants_choose_their_guard_mode() -> None:
    spec = TenantSpec.model_validate({"name": "bank", "guard_mode": "blocking"})
    assert Tenant.from_spec(spec, "k").guard_mode is GuardMode.BLOCKING
    assert TenantSpec(name="shop").guard_mode is GuardMode.ASYNC
    with pytest.raises(ValueError):
        TenantSpec.model_validate({"name": "x", "guard_mode": "sometimes"})


async def test_the_gateway_announces_its_blocking_tenants_to_the_batchers(
    start_gateway, guardian: Guardian
) -> None:
    """The open tenant in blocking mode is listed in Redis, where every batcher reads the tenants
    whose answers it must hold (shared/blocking_tenants.py)."""
    service = await _blocking_gateway(start_gateway, guardian)
    redis = aioredis.from_url(service.settings.redis_url)
    try:
        listed = await BlockingTenants(redis, prefix=service.settings.topic_prefix).read()
    finally:
        await redis.aclose()
    assert listed == {"default"}


async def _sse_chunks(http: httpx.AsyncClient, body: dict, path: str = "/v1/chat/completions") -> list[dict]:
    async with http.stream("POST", path, json=body) as stream:
        lines = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


async def test_an_answer_sent_as_generated_keeps_its_logprobs(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    async with http_for(service) as http:
        whole = await http.post("/v1/chat/completions", json=_chat(logprobs=True, top_logprobs=1))
        chunks = await _sse_chunks(http, _chat(stream=True, logprobs=True))
    assert whole.status_code == 200
    content = whole.json()["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == ANSWER
    assert [len(t["top_logprobs"]) for t in content] == [1] * len(content)
    # The stream's one content chunk (the judged answer) carries every token's.
    (judged,) = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert judged["choices"][0]["delta"]["content"] == ANSWER
    assert "".join(t["token"] for t in judged["choices"][0]["logprobs"]["content"]) == ANSWER
    assert _checks(service, "allow") == 2


async def test_a_held_answer_keeps_its_prompts_logprobs(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    body = {"model": FAKE_MODEL, "prompt": "hi there", "echo": True, "logprobs": 0}
    async with http_for(service) as http:
        whole = await http.post("/v1/completions", json=body)
        chunks = await _sse_chunks(http, {**body, "stream": True}, path="/v1/completions")
    assert whole.status_code == 200
    logprobs = whole.json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["hi", " there", *ANSWER_TOKENS] and logprobs["token_logprobs"][0] is None
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
    assert [t for lp in streamed for t in lp["tokens"]] == ["hi", " there", *ANSWER_TOKENS]
    assert _checks(service, "allow") == 2


async def test_a_held_answer_keeps_the_decoding_of_its_token_prompt(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    body = {"model": FAKE_MODEL, "prompt": [4, 2], "echo": True}
    async with http_for(service) as http:
        whole = await http.post("/v1/completions", json=body)
        chunks = await _sse_chunks(http, {**body, "stream": True}, path="/v1/completions")
    assert whole.status_code == 200 and whole.json()["choices"][0]["text"] == "w4 w2" + ANSWER
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "w4 w2" + ANSWER


async def test_a_redacted_answer_has_no_logprobs(start_gateway, fake_batcher: FakeBatcher, guardian: Guardian) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    guardian.redactor.on = True
    async with http_for(service) as http:
        whole = await http.post("/v1/chat/completions", json=_chat(logprobs=True))
        chunks = await _sse_chunks(http, _chat(stream=True, logprobs=True))
    assert whole.status_code == 200
    choice = whole.json()["choices"][0]
    assert choice["message"]["content"] == ANSWER.replace("batcher", "[REDACTED]")
    assert choice["logprobs"] is None  # the tokens would spell out the withheld word
    assert all(c["choices"][0]["logprobs"] is None for c in chunks if c["choices"])
    assert "batcher" not in whole.text and "batcher" not in json.dumps(chunks)


async def test_a_held_answer_keeps_its_prompts_token_ids_and_its_own_only_as_generated(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    async with http_for(service) as http:
        allowed = await http.post("/v1/chat/completions", json=_chat("a b", return_token_ids=True))
        guardian.redactor.on = True
        redacted = await http.post("/v1/chat/completions", json=_chat("a b", return_token_ids=True))
        chunks = await _sse_chunks(http, _chat("a b", stream=True, return_token_ids=True))
    ids = [100 + i for i in range(len(ANSWER_TOKENS))]
    assert (allowed.json()["prompt_token_ids"], allowed.json()["choices"][0]["token_ids"]) == ([1, 2], ids)
    # Redacted: the prompt's ids are the client's own; the answer's would spell out the withheld word.
    assert redacted.json()["prompt_token_ids"] == [1, 2] and "token_ids" not in redacted.json()["choices"][0]
    assert chunks[0]["prompt_token_ids"] == [1, 2]
    assert all(not c["choices"][0].get("token_ids") for c in chunks if c["choices"])


async def test_each_choice_is_judged_on_its_own(start_gateway, fake_batcher: FakeBatcher, guardian: Guardian) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    guardian.redactor.on = True
    redacted = ANSWER.replace("batcher", "[REDACTED]")
    async with http_for(service) as http:
        whole = await http.post("/v1/chat/completions", json=_chat(n=2))
        chunks = await _sse_chunks(http, _chat(n=3, stream=True))
    assert whole.status_code == 200
    assert [c["message"]["content"] for c in whole.json()["choices"]] == [redacted, redacted]
    assert _checks(service, "redact") == 2 + 3  # one check per choice
    # The stream: per choice, one content chunk (its judged answer), then its finish.
    for index in range(3):
        own = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert [c["delta"].get("content") for c in own if c["delta"].get("content")] == [redacted]
        assert own[-1]["finish_reason"] == "stop"
    assert "batcher" not in json.dumps(chunks)
    # Each choice went to the cluster as a request of its own (`<request id>.<i>`).
    assert sorted(r.id.rsplit(".", 1)[1] for r in fake_batcher.requests) == ["0", "0", "1", "1", "2"]


async def test_one_blocked_choice_blocks_the_answer(
    start_gateway, fake_batcher: FakeBatcher, guardian: Guardian
) -> None:
    service = await _blocking_gateway(start_gateway, guardian)
    guardian.blocker.on = True
    async with http_for(service) as http:
        blocked = await http.post("/v1/chat/completions", json=_chat(n=2))
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "content_filter"
    assert ANSWER not in blocked.text
