"""The factories' clients work against the real Tansu broker: produce, consume, commit, resume."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka_clients import make_consumer, make_producer
from shared.topics import TopicSpec, ensure_topics


async def test_produce_consume_commit_and_resume(cluster_settings) -> None:
    topic = f"{cluster_settings.topic_prefix}.probe"
    await ensure_topics(cluster_settings, [TopicSpec(topic, 1, 1)])
    producer = make_producer(cluster_settings, client_id="t-producer")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=f"k{i}")
    finally:
        await producer.stop()

    group = f"{cluster_settings.topic_prefix}-g"
    consumer = make_consumer(cluster_settings, topic, client_id="t-c1", group_id=group)
    await consumer.start()
    try:
        got = []
        while len(got) < 3:
            got.append(await asyncio.wait_for(consumer.getone(), 10))
        assert [m.value for m in got] == [b"m0", b"m1", b"m2"]
        assert got[0].key == b"k0"
        tp = TopicPartition(topic, 0)
        await consumer.commit({tp: got[-1].offset + 1})
        assert await consumer.committed(tp) == 3
    finally:
        await consumer.stop()

    # A new member of the group resumes after the committed offset (no auto-commit happened).
    consumer = make_consumer(cluster_settings, topic, client_id="t-c2", group_id=group)
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 10)
        assert msg.value == b"m3"
    finally:
        await consumer.stop()


@asynccontextmanager
async def _started_consumer(cluster_settings, name: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A started group-less consumer of a new one-partition topic `<prefix>.<name>`."""
    topic = f"{cluster_settings.topic_prefix}.{name}"
    await ensure_topics(cluster_settings, [TopicSpec(topic, 1, 1)])
    consumer = make_consumer(cluster_settings, topic, client_id=f"t-{name}", group_id=None)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def test_adaptive_fetch_wait_slows_down_when_idle_and_speeds_up_on_records(cluster_settings) -> None:
    from shared.kafka_clients import AdaptiveFetchWait

    async with _started_consumer(cluster_settings, "adaptive") as consumer:
        wait = AdaptiveFetchWait(consumer, busy_ms=5, idle_ms=150, idle_after_s=0.2)
        fetcher = consumer._fetcher  # noqa: SLF001 - the attribute the class relies on must exist
        assert fetcher._fetch_max_wait_ms == cluster_settings.kafka_fetch_max_wait_ms  # noqa: SLF001
        wait.polled(0)
        assert wait.current_ms == 5  # not idle long enough yet
        await asyncio.sleep(0.25)
        wait.polled(0)
        assert wait.current_ms == 150 and fetcher._fetch_max_wait_ms == 150  # noqa: SLF001
        wait.polled(3)
        assert wait.current_ms == 5 and fetcher._fetch_max_wait_ms == 5  # noqa: SLF001


async def test_adaptive_fetch_wait_goes_deep_idle_after_a_long_silence(cluster_settings) -> None:
    from shared.kafka_clients import AdaptiveFetchWait

    async with _started_consumer(cluster_settings, "deep-idle") as consumer:
        wait = AdaptiveFetchWait(
            consumer, busy_ms=5, idle_ms=100, idle_after_s=0.1, deep_idle_ms=900, deep_idle_after_s=0.3
        )
        fetcher = consumer._fetcher  # noqa: SLF001 - the attribute the class relies on must exist
        await asyncio.sleep(0.15)
        wait.polled(0)
        assert wait.current_ms == 100 and fetcher._fetch_max_wait_ms == 100  # noqa: SLF001
        await asyncio.sleep(0.2)
        wait.polled(0)
        assert wait.current_ms == 900 and fetcher._fetch_max_wait_ms == 900  # noqa: SLF001
        wait.polled(1)  # the first record: straight back to the busy wait
        assert wait.current_ms == 5 and fetcher._fetch_max_wait_ms == 5  # noqa: SLF001

        from_settings = AdaptiveFetchWait.from_settings(consumer, cluster_settings)
        assert (from_settings.idle_ms, from_settings.deep_idle_ms) == (
            cluster_settings.kafka_idle_fetch_max_wait_ms,
            cluster_settings.kafka_deep_idle_fetch_max_wait_ms,
        )
        background = AdaptiveFetchWait.off_serving_path(consumer, cluster_settings, busy_ms=100)
        assert background.busy_ms == 100 and background.idle_ms == cluster_settings.kafka_deep_idle_fetch_max_wait_ms
        assert background.idle_after_s == cluster_settings.kafka_idle_after_s


async def test_a_fetch_clears_its_broker_in_flight_mark_before_it_completes(cluster_settings) -> None:
    """ServiceConsumer's fix of aiokafka's race (see its docstring): once a fetch coroutine has
    returned, its broker is no longer marked in flight (aiokafka alone clears the mark only in a
    done-callback of the task, which may run after the fetcher has planned its next fetches)."""
    from shared.kafka_clients import ServiceConsumer

    async with _started_consumer(cluster_settings, "in-flight") as consumer:
        assert isinstance(consumer, ServiceConsumer)
        fetcher = consumer._fetcher  # noqa: SLF001 - the attributes the fix relies on must exist
        in_flight: set = fetcher._in_flight  # noqa: SLF001
        assignment = consumer._subscription.subscription.assignment  # noqa: SLF001
        (tp,) = consumer.assignment()
        await consumer.position(tp)
        node = consumer._client.cluster.leader_for_partition(tp)  # noqa: SLF001
        consumer.pause(tp)
        async with asyncio.timeout(5):
            while in_flight:  # the background fetch sent before the pause comes back
                await asyncio.sleep(0.005)
        in_flight.add(node)  # keeps the background routine from fetching on resume
        consumer.resume(tp)
        in_flight.discard(node)
        fetches = fetcher._get_actions_per_node(assignment)[0]  # noqa: SLF001 - no await: no interleaving
        in_flight.add(node)
        assert [n for n, _ in fetches] == [node]
        await fetcher._proc_fetch_request(assignment, node, fetches[0][1])  # noqa: SLF001
        assert node not in in_flight, "the broker still looks busy after its fetch returned"
