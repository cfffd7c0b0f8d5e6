"""Blocking guard mode enforced by the batcher: requests produced straight to a request topic (no
gateway on the way) for a blocking-mode tenant get judged answers only. A real batcher, simulated
workers, the real broker and Redis, and the guardian's real check API served in-process with
switchable detectors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from shared.blocking_tenants import BlockingTenants, api_keys_hash
from shared.launcher.infra import find_free_port
from shared.records import ErrorCode, GenerationParams, GuardMode, Priority, ReplyEvent, ReplyKind
from tests.guardian_check_server import Guardian, serve_guardian_check
from tests.services.batcher.harness import Harness, WorkerSpec, start_harness

#: The simulated workers answer `tok0 tok1 ... tok7` to 8-token requests.
BLOCK_WORD, REDACT_WORD = "tok3", "tok5"


@pytest.fixture
async def guardian() -> AsyncIterator[Guardian]:
    async with serve_guardian_check(block_word=BLOCK_WORD, redact_word=REDACT_WORD) as served:
        yield served


@pytest.fixture
async def blocking_tenants(cluster_settings) -> AsyncIterator[BlockingTenants]:
    """Blocking tenants written as the gateway and the operators write them, BEFORE the batcher
    starts: `keyed` through the Redis API-key hash, `announced` through a gateway's announcement."""
    redis = aioredis.from_url(cluster_settings.redis_url)
    prefix = cluster_settings.topic_prefix
    await redis.hset(api_keys_hash(prefix), mapping={
        "a" * 64: json.dumps({"name": "keyed", "guard_mode": "blocking"}),
        "b" * 64: json.dumps({"name": "relaxed", "guard_mode": "async"}),
        "c" * 64: "not json",  # an operator's typo must not break the list
    })
    tenants = BlockingTenants(redis, prefix=prefix)
    await tenants.announce({"announced"})
    try:
        yield tenants
    finally:
        await redis.aclose()


@pytest.fixture
async def harness(cluster_settings, guardian: Guardian, blocking_tenants: BlockingTenants) -> AsyncIterator[Harness]:
    async with start_harness(cluster_settings, batcher_guardian_url=guardian.url) as h:
        yield h


def _held(harness: Harness, outcome: str) -> float:
    return harness.batcher.metrics.held_answers.labels(outcome)._value.get()


async def test_the_blocking_list_reads_keyed_and_announced_tenants(blocking_tenants: BlockingTenants) -> None:
    assert await blocking_tenants.read() == {"keyed", "announced"}


@pytest.mark.parametrize("tenant", ["keyed", "announced"])
async def test_a_direct_request_of_a_blocking_tenant_is_held_and_judged(
    harness: Harness, guardian: Guardian, tenant: str
) -> None:
    # The record claims `async`: the tenant's mode wins, as the producer cannot choose it.
    request = harness.request(stream=True, tenant=tenant, guard=GuardMode.ASYNC)
    await harness.send(request)
    events = await harness.events_until_terminal(request.id)
    assert [e.kind for e in events] == [ReplyKind.FINAL], "no token may leave before the verdict"
    assert events[0].text == " ".join(f"tok{i}" for i in range(8))
    assert _held(harness, "allow") == 1


async def test_a_blocked_answer_never_leaves(harness: Harness, guardian: Guardian) -> None:
    guardian.blocker.on = True
    request = harness.request(stream=True, tenant="keyed")
    await harness.send(request)
    events = await harness.events_until_terminal(request.id)
    assert len(events) == 1 and events[0].kind is ReplyKind.ERROR
    assert events[0].error.code is ErrorCode.CONTENT_FILTER and "harm.S1" in events[0].error.message
    assert all(BLOCK_WORD not in (e.text or "") for e in events)
    result = await harness.result_for(request.id)
    assert result.error is not None and result.error.code is ErrorCode.CONTENT_FILTER and result.text == ""
    assert _held(harness, "block") == 1


async def test_a_redacted_answer_leaves_redacted(harness: Harness, guardian: Guardian) -> None:
    guardian.redactor.on = True
    request = harness.request(stream=False, tenant="announced")
    await harness.send(request)
    (final,) = await harness.events_until_terminal(request.id)
    assert final.kind is ReplyKind.FINAL
    assert REDACT_WORD not in final.text and "[REDACTED]" in final.text
    # The results topic is internal: the guardian's asynchronous verdict needs the generated text.
    assert REDACT_WORD in (await harness.result_for(request.id)).text


async def test_other_tenants_stream_unjudged(harness: Harness, guardian: Guardian) -> None:
    guardian.blocker.on = True  # would block, were the answer judged
    request = harness.request(stream=True, tenant="relaxed")
    await harness.send(request)
    events = await harness.events_until_terminal(request.id)
    assert events[-1].kind is ReplyKind.FINAL and BLOCK_WORD in events[-1].text
    assert sum(e.kind is ReplyKind.DELTA for e in events) >= 2
    assert _held(harness, "block") == 0


async def test_without_a_verdict_the_answer_is_not_sent(cluster_settings, blocking_tenants: BlockingTenants) -> None:
    nowhere = f"http://127.0.0.1:{find_free_port()}"
    async with start_harness(cluster_settings, batcher_guardian_url=nowhere, batcher_guard_timeout_s=1) as harness:
        request = harness.request(stream=True, guard=GuardMode.BLOCKING)  # tenant `default`
        await harness.send(request)
        events = await harness.events_until_terminal(request.id)
    assert len(events) == 1 and events[0].kind is ReplyKind.ERROR
    assert events[0].error.code is ErrorCode.GUARDIAN_UNAVAILABLE and events[0].error.retryable


async def test_a_tenant_put_in_blocking_mode_later_is_held_after_a_refresh(
    cluster_settings, guardian: Guardian, blocking_tenants: BlockingTenants
) -> None:
    async with start_harness(
        cluster_settings, batcher_guardian_url=guardian.url, batcher_blocking_tenants_refresh_s=0.2
    ) as harness:
        assert "late" not in harness.batcher.guard.blocking
        await blocking_tenants.announce({"late"})
        for _ in range(50):
            if "late" in harness.batcher.guard.blocking:
                break
            await asyncio.sleep(0.1)
        request = harness.request(stream=True, tenant="late")
        await harness.send(request)
        events = await harness.events_until_terminal(request.id)
    assert [e.kind for e in events] == [ReplyKind.FINAL]


async def test_a_slow_verdict_does_not_hold_up_its_batch_mates(
    cluster_settings, guardian: Guardian, blocking_tenants: BlockingTenants
) -> None:
    # Both requests in one batch (one Generate stream): a short held answer, judged for 2 s, and
    # a longer streaming one of another tenant, which must keep streaming and end while the
    # verdict is still coming. They are written as one record batch to one partition, so the
    # batcher takes both in one fetch (sent one by one, a fetch could take the first alone, and
    # with a free worker slot it would run at once: the test then failed now and then).
    guardian.blocker.delay_s = 2.0
    async with start_harness(
        cluster_settings, [WorkerSpec()], batcher_guardian_url=guardian.url, batcher_max_wait_ms=300,
        batcher_guard_timeout_s=10,
    ) as harness:
        held = harness.request(stream=True, tenant="keyed")
        free = harness.request(stream=True, tenant="relaxed", params=GenerationParams(max_new_tokens=60))
        together = harness.producer.create_batch()
        for request in (held, free):
            together.append(key=request.id.encode(), value=request.to_bytes(), timestamp=None)
        await (await harness.producer.send_batch(together, harness.topics.requests(Priority.NORMAL), partition=0))
        arrivals: dict[str, list[tuple[float, ReplyEvent]]] = {held.id: [], free.id: []}
        async with asyncio.timeout(30):
            while not all(events and events[-1][1].terminal for events in arrivals.values()):
                event = ReplyEvent.from_bytes((await harness.replies.getone()).value)
                if event.request_id in arrivals:
                    arrivals[event.request_id].append((time.monotonic(), event))
        registry = harness.batcher.metrics.registry
        batches = (registry.get_sample_value("lgc_batcher_batch_size_sum"), registry.get_sample_value("lgc_batcher_batch_size_count"))
        assert batches == (2, 1), "the two requests were not batched together"
    held_end, held_final = arrivals[held.id][-1]
    free_end, free_final = arrivals[free.id][-1]
    assert held_final.kind is ReplyKind.FINAL and free_final.kind is ReplyKind.FINAL
    assert free_final.usage.completion_tokens == 60
    assert free_end < held_end - 1.0, "the free stream waited for the held answer's verdict"
    gaps = [b[0] - a[0] for a, b in zip(arrivals[free.id], arrivals[free.id][1:])]
    assert max(gaps) < 1.0
