"""Bad input gets a 4xx with an OpenAI-style error object, never a 500 or a hang; the cluster keeps
serving afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import MODEL


@pytest.fixture
async def http(cluster):
    async with httpx.AsyncClient(base_url=cluster.endpoints.http_url, timeout=30) as client:
        yield client


def _assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL},  # no messages
        {"model": MODEL, "messages": "hi"},  # wrong type
        {"model": MODEL, "messages": [{"role": "user"}]},  # no content
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},  # bad role
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 7},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 1.5},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "priority": "urgent"},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
    ],
)
async def test_invalid_chat_bodies_are_400(http, body) -> None:
    _assert_error(await http.post("/v1/chat/completions", json=body), 400)


async def test_malformed_json_is_400(http) -> None:
    response = await http.post(
        "/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
    )
    _assert_error(response, 400)


async def test_oversized_body_is_413(http) -> None:
    huge = "x" * (2 * 1024 * 1024)
    body = {"model": MODEL, "messages": [{"role": "user", "content": huge}]}
    _assert_error(await http.post("/v1/chat/completions", json=body), 413)


async def test_oversized_prompt_is_400(http) -> None:
    long_prompt = "word " * 150_000  # under the body limit, over the prompt limit
    body = {"model": MODEL, "prompt": long_prompt[:700_000], "max_tokens": 1}
    response = await http.post("/v1/completions", json=body)
    assert response.status_code in (400, 413), response.text
    assert response.json()["error"]["message"]


async def test_cluster_still_serves_after_bad_input(http) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 3}
    response = await http.post("/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
