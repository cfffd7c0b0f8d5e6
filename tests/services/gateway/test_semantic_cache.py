"""The semantic cache with the real all-MiniLM-L6-v2 (loaded once per process) and qdrant-client's
local mode: paraphrases hit, near misses and other scopes miss; then through the real gateway."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from shared.records import ChatMessage, GenerationParams, GenerationRequest

from services.gateway.exact_cache import CachedAnswer
from services.gateway.semantic_cache import SemanticCache, semantic_query_text
from services.gateway.sentence_embedder import SentenceEmbedder
from services.gateway.service import GatewayService

from tests.services.gateway.conftest import ANSWER, FAKE_MODEL, FakeBatcher


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    embedder = SentenceEmbedder()
    embedder.encode_sync(["warm up"])  # the model loads once for the module (and the process)
    return embedder


def chat_request(content: str, *, tenant: str = "a", history: tuple[ChatMessage, ...] = (), **params: object) -> GenerationRequest:
    return GenerationRequest(
        id=f"req-{abs(hash((content, tenant, history))) % 10**9}",
        tenant=tenant,
        model="m",
        messages=(*history, ChatMessage(role="user", content=content)),
        params=GenerationParams(temperature=0.0, **params),
    )


async def test_embedding_is_normalised(embedder: SentenceEmbedder) -> None:
    vector = await embedder.encode("What is the capital of France?")
    assert len(vector) == 384
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-3


def test_query_text() -> None:
    assert semantic_query_text(chat_request("hi")) == "hi"
    assert semantic_query_text(GenerationRequest(id="x", model="m", prompt="p")) == "p"
    ends_with_assistant = GenerationRequest(
        id="x", model="m", messages=(ChatMessage(role="user", content="a"), ChatMessage(role="assistant", content="b"))
    )
    assert semantic_query_text(ends_with_assistant) is None


async def test_paraphrase_hits_and_near_misses_miss(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    cache = SemanticCache(
        SemanticCache.open_client(url=None, path=tmp_path / "qdrant"), embedder, collection="c", threshold=0.82, ttl_s=60
    )
    await cache.start()
    try:
        source = chat_request("What is the capital of France?")
        answer = CachedAnswer(text="Paris.", model="m", source_request_id=source.id)
        point = await cache.store(await cache.probe(source), answer)

        hit = await cache.find(await cache.probe(chat_request("Which city is the capital of France?")))
        assert hit is not None and hit[0].text == "Paris." and hit[1] == point
        assert hit[0].query == "What is the capital of France?"
        for near_miss in (
            "What is NOT the capital of France?",
            "What is the capital of Spain?",
            "What was the capital of France in 1500?",
        ):
            assert await cache.find(await cache.probe(chat_request(near_miss))) is None, near_miss
        # Other scopes: tenant, parameters, earlier turns.
        assert await cache.find(await cache.probe(chat_request("What is the capital of France?", tenant="b"))) is None
        assert await cache.find(await cache.probe(chat_request("What is the capital of France?", max_new_tokens=5))) is None
        history = (ChatMessage(role="system", content="Answer in French."),)
        assert await cache.find(await cache.probe(chat_request("What is the capital of France?", history=history))) is None
        # Deleted points are gone.
        await cache.delete([point])
        assert await cache.find(await cache.probe(chat_request("Which city is the capital of France?"))) is None
    finally:
        await cache.close()


async def test_expired_points_do_not_hit(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    cache = SemanticCache(
        SemanticCache.open_client(url=None, path=tmp_path / "qdrant"), embedder, collection="c", threshold=0.82, ttl_s=-1
    )
    await cache.start()
    try:
        source = chat_request("Who wrote Hamlet?")
        await cache.store(await cache.probe(source), CachedAnswer(text="Shakespeare", model="m", source_request_id=source.id))
        assert await cache.find(await cache.probe(source)) is None  # born expired
        await cache.sweep()
        assert (await cache._client.count("c")).count == 0  # noqa: SLF001 - checking the sweep
    finally:
        await cache.close()


async def ask(service: GatewayService, content: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"http://127.0.0.1:{service.http_port}/v1/chat/completions",
            json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0},
            headers=headers,
        )
    await service.pipeline.drain()
    return response


async def test_semantic_hits_through_the_gateway(
    start_gateway, fake_batcher: FakeBatcher, registered_worker, embedder: SentenceEmbedder
) -> None:
    blas_before = max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
    threadpool_limits(limits=2, user_api="blas")  # OpenBLAS's default on a 2-core machine
    try:
        service = await start_gateway(gateway_semantic_cache_enabled=True, gateway_embedder_threads=0)
        # Qdrant's local search runs on numpy: its BLAS is capped once the cache starts.
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
    finally:
        threadpool_limits(limits=blas_before, user_api="blas")  # the rest of the session as it was
    first = await ask(service, "What is the capital of France?")
    paraphrase = await ask(service, "Which city is the capital of France?")
    negation = await ask(service, "What is NOT the capital of France?")
    assert first.headers["x-lgc-cache"] == "miss"
    assert paraphrase.headers["x-lgc-cache"] == "hit-semantic"
    assert paraphrase.json()["choices"][0]["message"]["content"] == ANSWER
    assert negation.headers["x-lgc-cache"] == "miss"
    assert len(fake_batcher.requests) == 2
    assert service.registry.get_sample_value("lgc_gateway_cache_hits_total", {"kind": "hit-semantic"}) == 1
    # The purge removes the semantic point too.
    assert service.purger is not None
    assert await service.purger.purge(first.headers["x-request-id"]) == 2  # exact key + point
    assert (await ask(service, "Which city is the capital of France?")).headers["x-lgc-cache"] == "miss"


async def test_a_locked_local_directory_falls_back_to_a_private_one(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    first = SemanticCache(SemanticCache.open_client(url=None, path=tmp_path / "q"), embedder, collection="c", threshold=0.8, ttl_s=60)
    second = SemanticCache(SemanticCache.open_client(url=None, path=tmp_path / "q"), embedder, collection="c", threshold=0.8, ttl_s=60)
    await first.start()
    await second.start()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "q")  # the private directory
    await second.close()
    await first.close()
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # removed at close


async def test_chat_and_completion_scopes_differ(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    cache = SemanticCache(SemanticCache.open_client(url=None, path=tmp_path / "q"), embedder, collection="c", threshold=0.8, ttl_s=60)
    chat = chat_request("The capital of France is")
    completion = GenerationRequest(id="p1", tenant="a", model="m", prompt="The capital of France is", params=chat.params)
    assert (await cache.probe(chat)).scope != (await cache.probe(completion)).scope
    await cache.close()


async def test_a_local_store_starts_empty(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    async def open_cache() -> SemanticCache:
        cache = SemanticCache(SemanticCache.open_client(url=None, path=tmp_path / "q"), embedder, collection="c", threshold=0.8, ttl_s=60)
        await cache.start()
        return cache

    cache = await open_cache()
    source = chat_request("Who wrote Hamlet?")
    await cache.store(await cache.probe(source), CachedAnswer(text="Shakespeare", model="m", source_request_id=source.id))
    assert await cache.find(await cache.probe(source)) is not None
    await cache.close()
    cache = await open_cache()
    try:
        assert await cache.find(await cache.probe(source)) is None
    finally:
        await cache.close()
