"""The gateway's caches in the running embedded cluster with the real model and the official
openai client: an exact hit replays the model's answer, a paraphrase hits the semantic cache, a
negation of it does not, and `Cache-Control: no-cache` goes to the model again."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import MODEL


@pytest.fixture
def client(cluster) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{cluster.endpoints.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


async def ask(client: AsyncOpenAI, question: str, **headers: str):
    return await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=8,
        temperature=0,
        extra_headers=headers or None,
    )


async def test_exact_then_semantic_hit_and_guarded_miss(client) -> None:
    first = await ask(client, "What is the largest planet in the solar system?")
    assert first.headers["x-lgc-cache"] == "miss"
    answer = first.parse().choices[0].message.content
    assert answer
    again = await ask(client, "What is the largest planet in the solar system?")
    assert again.headers["x-lgc-cache"] == "hit-exact"
    assert again.parse().choices[0].message.content == answer
    assert again.headers["x-request-id"] != first.headers["x-request-id"]

    paraphrase = await ask(client, "Which planet is the largest in the solar system?")
    assert paraphrase.headers["x-lgc-cache"] == "hit-semantic"
    assert paraphrase.parse().choices[0].message.content == answer
    smallest = await ask(client, "What is the smallest planet in the solar system?")
    assert smallest.headers["x-lgc-cache"] == "miss"

    fresh = await ask(client, "What is the largest planet in the solar system?", **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-lgc-cache"] == "bypass"
    assert fresh.parse().choices[0].message.content == answer  # greedy: the model agrees with its cache


async def test_sampled_requests_bypass_the_cache(client) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Say a random word."}], max_tokens=4, temperature=0.9
    )
    assert raw.headers["x-lgc-cache"] == "bypass"
