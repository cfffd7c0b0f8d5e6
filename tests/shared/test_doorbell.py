"""The doorbell against real Redis and Tansu: rings coalesce per partition (leading and trailing
edge) and carry the highest offset; a listener keeps the highest announced offset; parking holds
only partitions read past what was announced, stops while unsubscribed, after an unannounced
record and for safety fetches; a parked consumer sees a rung record at the broker's first read."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from shared.doorbell import DoorbellListener, DoorbellRinger, FetchParking, doorbell_channel
from shared.kafka_clients import make_consumer, make_producer
from shared.topics import TopicSpec, ensure_topics


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(redis_url: str):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def _listening(redis, topics: list[str], rung: list) -> DoorbellListener:
    listener = DoorbellListener(redis, topics, on_ring=rung.append)
    await listener.start()
    assert listener.subscribed
    return listener


async def _until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_rings_coalesce_per_partition_and_carry_the_highest_offset(redis, unique_prefix: str) -> None:
    topic = f"{unique_prefix}.requests"
    rung: list = []
    listener = await _listening(redis, [topic], rung)
    ringer = DoorbellRinger(redis, interval_s=0.05)
    try:
        ringer.announce(topic, 0, 10)  # leading edge: at once
        ringer.announce(topic, 0, 11)  # within the interval: one trailing ring for both
        ringer.announce(topic, 0, 12)
        ringer.announce(topic, 1, 3)  # another partition rings on its own
        await _until(lambda: listener.announced(TopicPartition(topic, 1)) == 3)
        assert listener.announced(TopicPartition(topic, 0)) == 10  # the trailing ring is not out yet
        await _until(lambda: listener.announced(TopicPartition(topic, 0)) == 12)
        assert ringer.rings == 3
        assert [tp for tp in rung if tp is not None].count(TopicPartition(topic, 0)) == 2
    finally:
        await ringer.aclose()
        await listener.stop()


async def test_close_rings_what_is_pending(redis, unique_prefix: str) -> None:
    topic = f"{unique_prefix}.replies"
    rung: list = []
    listener = await _listening(redis, [topic], rung)
    ringer = DoorbellRinger(redis, interval_s=60.0)
    try:
        ringer.announce(topic, 0, 1)
        ringer.announce(topic, 0, 2)  # trailing, a minute away
        await ringer.aclose()
        await _until(lambda: listener.announced(TopicPartition(topic, 0)) == 2)
    finally:
        await listener.stop()


async def test_listener_ignores_other_channels_and_malformed_rings(redis, unique_prefix: str) -> None:
    topic = f"{unique_prefix}.requests"
    rung: list = []
    listener = await _listening(redis, [topic], rung)
    try:
        await redis.publish(doorbell_channel(topic), "not a ring")
        await redis.publish(doorbell_channel(f"{topic}-other"), "0 5")
        await redis.publish(doorbell_channel(topic), "0 7")
        await _until(lambda: listener.announced(TopicPartition(topic, 0)) == 7)
        await redis.publish(doorbell_channel(topic), "0 4")  # older: the highest stays
        await _until(lambda: listener.rings == 2)
        assert listener.announced(TopicPartition(topic, 0)) == 7
        assert listener.announced(TopicPartition(f"{topic}-other", 0)) == -1
    finally:
        await listener.stop()


async def test_a_ring_that_cannot_be_published_is_counted_not_raised(unique_prefix: str) -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    ringer = DoorbellRinger(dead, interval_s=0.01)
    try:
        ringer.announce(f"{unique_prefix}.t", 0, 1)
        await ringer.aclose()
        assert ringer.failures == 1
    finally:
        await dead.aclose()


def _parking(listener: DoorbellListener, clock: _Clock) -> FetchParking:
    return FetchParking(
        listener, safety_interval_s=0.05, hold_s=2.0, deep_idle_after_s=30.0, deep_safety_interval_s=0.5,
        grace_s=0.02, clock=clock,
    )


async def test_parking_holds_only_what_was_read_past_the_announcements(redis, unique_prefix: str) -> None:
    topic = f"{unique_prefix}.requests"
    a, b = TopicPartition(topic, 0), TopicPartition(topic, 1)
    clock = _Clock()
    listener = DoorbellListener(redis, [topic])
    parking = _parking(listener, clock)
    assert not parking.active()  # not subscribed: fetch as without a doorbell
    await listener.start()
    try:
        assert parking.safety_due()  # the first round fetches: records may predate the subscription
        assert parking.parkable({a: 0, b: 0}) == set()
        parking.fetched()
        assert parking.active()
        assert parking.parkable({a: 0, b: 0}) == {a, b}
        listener.handle(doorbell_channel(topic), "0 4")
        assert parking.parkable({a: 4, b: 0}) == {b}  # offset 4 announced, not read yet
        assert parking.parkable({a: 5, b: 0}) == {a, b}
        # A record read before its ring: parking goes on, and the ring within grace_s confirms it.
        parking.read(a, 5)
        listener.handle(doorbell_channel(topic), "0 5")
        clock.now += 0.03
        assert parking.active() and parking.unannounced == 0
        # An unannounced record (a producer that does not ring): once no ring came within
        # grace_s, no parking for hold_s.
        parking.read(b, 0)
        assert parking.active()
        clock.now += 0.03
        assert not parking.active() and not parking.safety_due()
        assert parking.unannounced == 1
        clock.now += 2.0
        assert parking.safety_due()
        parking.fetched()
        assert parking.active()
        parking.read(a, 4)  # announced: parking stays
        clock.now += 0.01
        assert parking.active()
        # An announcement the broker never reached (highwater 6 <= 9) is dropped once stale.
        listener.handle(doorbell_channel(topic), "0 9")
        assert parking.parkable({a: 6}, {a: 6}) == set()
        parking.stale_s = 0.0
        assert parking.parkable({a: 6}, {a: 6}) == {a}
        assert listener.announced(a) == 5
    finally:
        await listener.stop()
    assert not parking.active()


async def test_safety_fetches_follow_the_silence(redis, unique_prefix: str) -> None:
    topic = f"{unique_prefix}.requests"
    clock = _Clock()
    listener = await _listening(redis, [topic], [])
    parking = _parking(listener, clock)
    try:
        parking.fetched()
        assert parking.next_safety_in() == pytest.approx(0.05)
        clock.now += 0.05
        assert parking.safety_due() and not parking.active()
        parking.fetched()
        clock.now += 40.0  # silent longer than deep_idle_after_s
        parking.fetched()
        assert parking.next_safety_in() == pytest.approx(0.5)
        parking.request_fetch()
        assert parking.safety_due()
        assert parking.safety_window_s(5) == pytest.approx(0.011)
    finally:
        await listener.stop()


async def test_a_busy_consumer_does_not_park(redis, unique_prefix: str) -> None:
    """Records faster than BUSY_RECORDS per BUSY_WINDOW_S: every fetch brings some, so the
    consumer fetches as without a doorbell until they slow down."""
    from shared.doorbell import BUSY_RECORDS, BUSY_WINDOW_S

    topic = f"{unique_prefix}.requests"
    a = TopicPartition(topic, 0)
    clock = _Clock()
    listener = await _listening(redis, [topic], [])
    parking = _parking(listener, clock)
    try:
        parking.fetched()
        listener.handle(doorbell_channel(topic), f"0 {BUSY_RECORDS * 2}")
        parking.read(a, BUSY_RECORDS - 2, BUSY_RECORDS - 1)
        assert parking.active() and not parking.busy()
        parking.read(a, BUSY_RECORDS - 1, 1)
        assert parking.busy() and not parking.active() and not parking.safety_due()
        assert parking.parkable({a: BUSY_RECORDS * 3}) == set()
        clock.now += BUSY_WINDOW_S + 0.001
        assert not parking.busy() and parking.active()
        assert parking.parkable({a: BUSY_RECORDS * 3}) == {a}
    finally:
        await listener.stop()


async def test_a_parked_consumer_reads_a_rung_record_at_once(cluster_settings, redis) -> None:
    """The point of it all: with a paused partition and no fetch in flight, the ring's resume
    finds the record at the broker's first read instead of the next read of a waiting fetch."""
    topic = f"{cluster_settings.topic_prefix}.bell"
    await ensure_topics(cluster_settings, [TopicSpec(topic, 1, 1)])
    tp = TopicPartition(topic, 0)
    producer = make_producer(cluster_settings, client_id="t-bell-producer")
    # A long fetch wait: without the doorbell a record would wait for the broker's next read.
    consumer = make_consumer(
        cluster_settings.model_copy(update={"kafka_fetch_max_wait_ms": 2_000}),
        client_id="t-bell-consumer", group_id=None, auto_offset_reset="latest",
    )
    await producer.start()
    consumer.assign([tp])
    await consumer.start()
    listener = DoorbellListener(redis, [topic], on_ring=lambda t: t is not None and consumer.resume(t))
    ringer = DoorbellRinger(redis, interval_s=0.001)
    try:
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        await listener.start()
        consumer.pause(tp)
        await asyncio.sleep(0.1)
        latencies = []
        for i in range(5):
            waiting = asyncio.ensure_future(consumer.getmany(tp, timeout_ms=5_000))
            await asyncio.sleep(0.02)
            began = time.perf_counter()
            sent = await producer.send(topic, f"r{i}".encode())
            ringer.announce_when_acknowledged(sent)
            await sent
            batches = await waiting
            latencies.append(time.perf_counter() - began)
            assert [r.value for r in batches[tp]] == [f"r{i}".encode()]
            consumer.pause(tp)
        # Without the ring the record would wait about 1 s (half the 2 s wait) for the broker.
        assert sorted(latencies)[2] < 0.5, latencies
        assert listener.announced(tp) == await consumer.position(tp) - 1
    finally:
        await ringer.aclose()
        await listener.stop()
        await consumer.stop()
        await producer.stop()


async def test_a_producer_writing_as_fast_as_a_busy_consumer_reads_rings_less_often(redis, unique_prefix: str) -> None:
    from shared.doorbell import BUSY_RECORDS, BUSY_RING_INTERVAL_S

    topic = f"{unique_prefix}.replies"
    listener = await _listening(redis, [topic], [])
    clock = _Clock()
    ringer = DoorbellRinger(redis, interval_s=0.001, clock=clock)
    try:
        for offset in range(BUSY_RECORDS - 1):  # 2 ms apart: each one rings (interval 1 ms)
            ringer.announce(topic, 0, offset)
            clock.now += 0.002
        assert ringer.rings == BUSY_RECORDS - 1
        for offset in range(BUSY_RECORDS - 1, BUSY_RECORDS + 5):  # now busy: one trailing ring
            ringer.announce(topic, 0, offset)
            clock.now += 0.002
        assert ringer.rings == BUSY_RECORDS - 1
        await asyncio.sleep(BUSY_RING_INTERVAL_S + 0.02)
        assert ringer.rings == BUSY_RECORDS
        await _until(lambda: listener.announced(TopicPartition(topic, 0)) == BUSY_RECORDS + 4)
    finally:
        await ringer.aclose()
        await listener.stop()
