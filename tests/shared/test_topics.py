"""Topic names and explicit creation against the real broker."""

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.records import Priority
from shared.topics import Topics, ensure_topics


def test_names_follow_the_prefix() -> None:
    t = Topics("acme")
    assert t.all_requests == ("acme.requests.high", "acme.requests.normal", "acme.requests.low")
    assert t.replies("gw-1") == "acme.replies.gw-1"
    assert t.priority_of("acme.requests.low") is Priority.LOW
    with pytest.raises(ValueError):
        t.priority_of("acme.results")


async def test_ensure_topics_creates_once_with_partitions(cluster_settings) -> None:
    settings = cluster_settings.model_copy(update={"request_topic_partitions": 6})
    topics = Topics.from_settings(settings)
    specs = topics.cluster_topics(settings)
    created = await ensure_topics(settings, specs)
    assert sorted(created) == sorted(s.name for s in specs)
    assert await ensure_topics(settings, specs) == []  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topics.requests(Priority.HIGH), topics.cancellations])
    finally:
        await admin.close()
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    assert partitions[topics.requests(Priority.HIGH)] == 6
    assert partitions[topics.cancellations] == 1
