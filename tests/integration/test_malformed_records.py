"""Malformed and oversized records on every topic a service reads, on the running cluster.

DESIGN.md: a record a consumer cannot parse goes to the dead-letter topic with the error, and the
consumer moves on. For every topic with a consumer group (requests by the batcher, the gateway's
reply topic, results by the guardian, metrics by the scaler) three bad records are produced: bytes
that are not JSON, JSON of the wrong shape, and a record larger than `kafka_max_record_bytes`. Each
must reach `lgc.deadletter` with its original bytes and the topic it came from.

The two topics every instance reads without a group (cancellations, read by every batcher, and
verdicts, read by every gateway for cache purges) do not dead-letter: each instance would add its
own copy. They log and skip, which this test checks by the cluster still serving.

Afterwards every service is still ready and a real request is answered.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx

from shared.deadletter import dead_letter_from_headers
from shared.kafka_clients import make_consumer, make_producer
from shared.records import Priority
from shared.settings import ClusterSettings
from shared.topics import Topics
from tests.integration.conftest import MODEL


def _bad_records(marker: str, max_bytes: int) -> dict[str, bytes]:
    oversized = json.dumps({"marker": marker, "padding": "x" * (max_bytes + 1_024)}).encode()
    return {
        "not-json": b"\xff\xfe not json " + marker.encode(),
        "wrong-shape": json.dumps({"marker": marker, "unexpected": [1, 2, 3]}).encode(),
        "oversized": oversized,
    }


async def test_bad_records_on_every_topic_are_dead_lettered_and_the_cluster_goes_on(cluster) -> None:
    settings = ClusterSettings(kafka_bootstrap=cluster.endpoints.kafka_bootstrap, topic_prefix="lgc")
    topics = Topics.from_settings(settings)
    dead_lettering = [
        *(topics.requests(p) for p in Priority),
        "lgc.replies.gateway-0",
        topics.results,
        topics.metrics,
    ]
    skipping = [topics.cancellations, topics.verdicts]

    dlq = make_consumer(settings, topics.deadletter, client_id="dlq-reader", group_id=None, auto_offset_reset="earliest")
    producer = make_producer(settings, client_id="bad-producer")
    await dlq.start()
    await producer.start()
    expected: dict[tuple[str, str], bytes] = {}
    try:
        for topic in dead_lettering + skipping:
            marker = uuid.uuid4().hex
            for kind, value in _bad_records(marker, settings.kafka_max_record_bytes).items():
                await producer.send_and_wait(topic, value, key=f"bad-{kind}".encode())
                if topic in dead_lettering:
                    expected[(topic, kind)] = value

        # The cluster serves with the bad records in its topics. (This also wakes the gateway's
        # reply router: its partitions are paused while none of its requests is in flight, so it
        # reads the bad records only now.)
        async with httpx.AsyncClient(timeout=60) as http:
            for name, service in cluster.services.items():
                if service.spec.ready_url:
                    response = await http.get(service.spec.ready_url)
                    assert response.status_code == 200, (name, response.text)
            answer = await http.post(
                f"{cluster.endpoints.http_url}/v1/chat/completions",
                headers={"Cache-Control": "no-cache"},
                json={"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1

        found: dict[tuple[str, str], bytes] = {}
        deadline = time.monotonic() + 90
        while len(found) < len(expected) and time.monotonic() < deadline:
            batches = await dlq.getmany(timeout_ms=500)
            for record in (r for batch in batches.values() for r in batch):
                info = dead_letter_from_headers(record.headers)
                for (topic, kind), value in expected.items():
                    if info.topic == topic and record.value == value:
                        assert info.error, (topic, kind)
                        found[(topic, kind)] = value
        missing = sorted(set(expected) - set(found))
        assert not missing, f"not dead-lettered: {missing}"
    finally:
        await producer.stop()
        await dlq.stop()

