"""Dead-lettering keeps the original bytes and says why, on the real broker."""

import asyncio

from shared.deadletter import dead_letter_from_headers, publish_dead_letter
from shared.kafka_clients import make_consumer, make_producer
from shared.topics import TopicSpec, Topics, ensure_topics


async def test_dead_letter_keeps_bytes_and_reason(cluster_settings) -> None:
    topics = Topics.from_settings(cluster_settings)
    source = f"{cluster_settings.topic_prefix}.src"
    await ensure_topics(cluster_settings, [TopicSpec(source, 1, 1), TopicSpec(topics.deadletter, 1, 1)])
    producer = make_producer(cluster_settings, client_id="t")
    await producer.start()
    consumer = make_consumer(cluster_settings, source, client_id="t-src", group_id=None)
    dlq = make_consumer(cluster_settings, topics.deadletter, client_id="t-dlq", group_id=None)
    await consumer.start()
    await dlq.start()
    try:
        await producer.send_and_wait(source, b"\x00not json", key="bad-1")
        record = await asyncio.wait_for(consumer.getone(), 10)
        await publish_dead_letter(producer, topics.deadletter, record, "unparseable: boom", consumer="tests")
        dead = await asyncio.wait_for(dlq.getone(), 10)
        assert dead.value == b"\x00not json"
        assert dead.key == b"bad-1"
        info = dead_letter_from_headers(dead.headers)
        assert info.error == "unparseable: boom"
        assert (info.topic, info.partition, info.offset, info.consumer) == (source, 0, record.offset, "tests")
    finally:
        await consumer.stop()
        await dlq.stop()
        await producer.stop()
