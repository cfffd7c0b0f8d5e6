"""Guardian verdicts purge cached answers: real verdict records on the real broker, real Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared.kafka_clients import make_producer
from shared.records import GuardianVerdict, VerdictAction
from shared.settings import ClusterSettings
from shared.topics import Topics

from services.gateway.exact_cache import request_index_key
from services.gateway.service import GatewayService

from tests.services.gateway.conftest import FAKE_MODEL, FakeBatcher

pytestmark = pytest.mark.usefixtures("registered_worker")


async def ask(service: GatewayService, content: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as http:
        response = await http.post(
            f"http://127.0.0.1:{service.http_port}/v1/completions",
            json={"model": FAKE_MODEL, "prompt": content, "temperature": 0},
        )
    await service.pipeline.drain()
    return response


async def publish(cluster_settings: ClusterSettings, *verdicts: GuardianVerdict) -> None:
    producer = make_producer(cluster_settings, client_id="verdicts-test")
    await producer.start()
    try:
        for verdict in verdicts:
            await producer.send_and_wait(
                Topics.from_settings(cluster_settings).verdicts, verdict.to_bytes(), key=verdict.request_id
            )
    finally:
        await producer.stop()


async def wait_purged(service: GatewayService, count: float) -> None:
    async with asyncio.timeout(10):
        while (service.registry.get_sample_value("lgc_gateway_cache_purged_entries_total") or 0) < count:
            await asyncio.sleep(0.02)  # test-side wait for a background consumer


async def test_flagged_answers_are_purged(
    start_gateway, fake_batcher: FakeBatcher, cluster_settings: ClusterSettings
) -> None:
    service = await start_gateway()
    source = await ask(service, "tell me a secret")
    hit = await ask(service, "tell me a secret")
    other = await ask(service, "harmless")
    assert hit.headers["x-lgc-cache"] == "hit-exact"
    index = request_index_key(cluster_settings.topic_prefix, hit.headers["x-request-id"])
    assert service.purger is not None
    # Garbage and `allow` change nothing; a `block` on the hit's own id purges the shared entry.
    producer = make_producer(cluster_settings, client_id="garbage")
    await producer.start()
    await producer.send_and_wait(Topics.from_settings(cluster_settings).verdicts, b"garbage", key="x")
    await producer.stop()
    await publish(
        cluster_settings,
        GuardianVerdict(request_id=other.headers["x-request-id"], tenant="default", action=VerdictAction.ALLOW),
        GuardianVerdict(request_id=hit.headers["x-request-id"], tenant="default", action=VerdictAction.BLOCK),
    )
    await wait_purged(service, 1)
    assert (await ask(service, "tell me a secret")).headers["x-lgc-cache"] == "miss"
    assert (await ask(service, "harmless")).headers["x-lgc-cache"] == "hit-exact"
    assert source.headers["x-request-id"] != hit.headers["x-request-id"]
    assert index  # the index itself expires with the TTL, so other replicas still find it

    # A flag on the request that produced an answer purges it as well.
    fresh = await ask(service, "another one")
    assert fresh.headers["x-lgc-cache"] == "miss"
    await publish(
        cluster_settings,
        GuardianVerdict(request_id=fresh.headers["x-request-id"], tenant="default", action=VerdictAction.FLAG),
    )
    await wait_purged(service, 2)
    assert (await ask(service, "another one")).headers["x-lgc-cache"] == "miss"
