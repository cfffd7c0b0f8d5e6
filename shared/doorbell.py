"""A doorbell beside Kafka: producers announce the offsets they wrote over Redis pub/sub, so a
consumer that has read everything announced can keep its partitions paused and send no fetch.

Why: Tansu does not wake a waiting fetch when data arrives; it reads its storage again after half
the wait, three quarters, ... (shared/kafka_clients.py, load-tests/tansu_fetch_schedule.py). So a
consumer that must react in milliseconds keeps a short fetch in flight all the time, and each
record still waits for the broker's next read of it: about 3 ms per hop at the 5 ms busy wait,
three hops per request, plus the CPU of ~200 fetches a second per consumer taken from everything
else (services/batcher/README.md). With the doorbell a caught-up consumer is paused; a ring
resumes the partition and the fetch that follows finds the record at the broker's first read.

The contract, for our producers and for any upstream system that wants the same latency:

* after a record is acknowledged, `PUBLISH doorbell:<topic> "<partition> <offset>"` (the
  record's own offset). One ring may stand for many records: a producer rings at once when it
  has not rung that partition for `interval_s`, otherwise once when the interval is over, with
  the highest offset written meanwhile (leading and trailing edge), so a busy partition costs at
  most one ring per interval and no record waits more than `interval_s` for its ring (longer
  intervals only while the consumer is busy anyway: :class:`DoorbellRinger`);
* a consumer (:class:`FetchParking`) keeps a partition paused ("parked") only while it has read
  past the highest announced offset, and never while the doorbell is not subscribed or records
  come so fast that every fetch brings some (`BUSY_RECORDS`);
* nothing depends on rings arriving: pub/sub is at most once. A parked consumer still fetches
  every `safety_interval_s` (its records then wait at most that long), and a record it reads
  that no ring covers within `grace_s` (a producer that does not ring) turns parking off for
  `hold_s`, so such traffic is fetched as it was without a doorbell.

On Apache Kafka, which answers a waiting fetch as soon as data arrives, the doorbell buys nothing
and can be switched off (`LGC_KAFKA_DOORBELL=false`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from redis.exceptions import RedisError

from shared.background_tasks import cancel_and_wait
from shared.settings import ClusterSettings

__all__ = ["DoorbellListener", "DoorbellRinger", "FetchParking", "doorbell_channel", "send_announced"]

log = logging.getLogger(__name__)

#: Records read within `BUSY_WINDOW_S` from which a consumer counts as busy and does not park:
#: records then come about as fast as a fetch in flight waits, so fetches bring some anyway and
#: parking would only add pause/resume churn (with parking throughout, 4-16 clients through the
#: gateway made 10-25 % fewer requests/s). 12 in 40 ms is 300 records/s; one request at a time
#: makes about 200.
BUSY_RECORDS = 12
BUSY_WINDOW_S = 0.04
#: Ring interval of a producer that writes a partition as fast as a busy consumer reads (at least
#: BUSY_RECORDS in BUSY_WINDOW_S by itself): its consumer is busy and does not park, so the rings
#: only have to keep up with the changes, not with the records.
BUSY_RING_INTERVAL_S = 0.02

#: Wait before re-subscribing after the Redis connection broke (consumers fetch as without a
#: doorbell meanwhile).
_RESUBSCRIBE_BACKOFF_S = 1.0


class _RecentCount:
    """How many records were seen within the last `BUSY_WINDOW_S` (the busy test of both sides)."""

    __slots__ = ("_seen", "_total")

    def __init__(self) -> None:
        self._seen: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def add(self, now: float, count: int = 1) -> None:
        self._seen.append((now, count))
        self._total += count

    def busy(self, now: float) -> bool:
        """Whether `BUSY_RECORDS` or more were seen within `BUSY_WINDOW_S` of `now`."""
        while self._seen and now - self._seen[0][0] > BUSY_WINDOW_S:
            self._total -= self._seen.popleft()[1]
        return self._total >= BUSY_RECORDS


def doorbell_channel(topic: str) -> str:
    """The Redis channel announcing `topic`'s records (Kafka topic names cannot hold ':')."""
    return f"doorbell:{topic}"


class DoorbellRinger:
    """Producer side: announces acknowledged records, at most one ring per partition and
    `interval_s` (see the module docstring), or per `BUSY_RING_INTERVAL_S` while this producer
    alone writes the partition as fast as a busy consumer reads (that consumer does not park; the
    longer interval took the rings' cost at 16 clients from 10-25 % to 6-8 % of the requests/s).
    Never raises: a ring that fails only costs the consumer's safety fetch interval."""

    def __init__(self, redis: Any, *, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, int], float] = {}
        #: Highest offset written since the last ring, per partition with a trailing ring due.
        self._pending: dict[tuple[str, int], int] = {}
        self._timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task[None]] = set()
        #: Per partition: the records announced lately (the busy test).
        self._recent: dict[tuple[str, int], _RecentCount] = {}
        self.rings = 0
        self.failures = 0

    @classmethod
    def from_settings(cls, redis: Any, settings: ClusterSettings) -> DoorbellRinger | None:
        """The ringer the settings ask for, None with `kafka_doorbell` off."""
        if not settings.kafka_doorbell:
            return None
        return cls(redis, interval_s=settings.kafka_doorbell_ring_interval_ms / 1000)

    def announce(self, topic: str, partition: int, offset: int) -> None:
        """A record at `offset` of `topic`/`partition` was acknowledged."""
        key = (topic, partition)
        now = self._clock()
        recent = self._recent.setdefault(key, _RecentCount())
        recent.add(now)
        if key in self._pending:  # a trailing ring is due: it carries this record too
            self._pending[key] = max(self._pending[key], offset)
            return
        interval = BUSY_RING_INTERVAL_S if recent.busy(now) else self.interval_s
        last = self._last.get(key)
        if last is None or now - last >= interval:
            self._ring(key, offset, now)
            return
        self._pending[key] = offset
        delay = max(0.0, last + interval - now)
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._trailing, key)

    def announce_when_acknowledged(self, sent: asyncio.Future[Any]) -> None:
        """Announce the record of an aiokafka send future (from `producer.send`) once the broker
        has it; a failed send announces nothing (its caller sees the error)."""
        sent.add_done_callback(self._on_sent)

    def _on_sent(self, sent: asyncio.Future[Any]) -> None:
        if sent.cancelled() or sent.exception() is not None:
            return
        metadata = sent.result()
        self.announce(metadata.topic, metadata.partition, metadata.offset)

    def _trailing(self, key: tuple[str, int]) -> None:
        self._timers.pop(key, None)
        offset = self._pending.pop(key, None)
        if offset is not None:
            self._ring(key, offset, self._clock())

    def _ring(self, key: tuple[str, int], offset: int, now: float) -> None:
        self._last[key] = now
        self.rings += 1
        task = asyncio.get_running_loop().create_task(self._publish(key, offset))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, key: tuple[str, int], offset: int) -> None:
        topic, partition = key
        try:
            await self._redis.publish(doorbell_channel(topic), f"{partition} {offset}")
        except (RedisError, OSError) as exc:
            # Safe: the record is in Kafka; the consumer's safety fetch reads it within its interval.
            self.failures += 1
            log.warning("doorbell ring failed; the consumer's safety fetch will find the record", extra={"error": str(exc)})

    async def aclose(self) -> None:
        """Ring what is pending now and wait for the rings in flight (call before closing Redis)."""
        for key, timer in list(self._timers.items()):
            timer.cancel()
            self._trailing(key)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


async def send_announced(
    producer: AIOKafkaProducer, ringer: DoorbellRinger | None, topic: str, value: bytes, key: str | bytes
) -> asyncio.Future[Any]:
    """`producer.send()` (waits only for room in the producer's buffer); with a ringer the record
    is announced once acknowledged. Returns the send's future, i.e. the acknowledgement."""
    sent = await producer.send(topic, value, key=key)
    if ringer is not None:
        ringer.announce_when_acknowledged(sent)
    return sent


class DoorbellListener:
    """Consumer side: subscribes to the doorbells of `topics` and keeps the highest announced
    offset per partition. `on_ring(tp)` is called for every ring (`None` after a (re)subscribe:
    rings may have been missed, so the caller should fetch once)."""

    def __init__(
        self,
        redis: Any,
        topics: Iterable[str],
        *,
        on_ring: Callable[[TopicPartition | None], None] = lambda _tp: None,
    ) -> None:
        self._redis = redis
        self._channels = {doorbell_channel(t): t for t in topics}
        self._on_ring = on_ring
        self._announced: dict[TopicPartition, int] = {}
        self._announced_at: dict[TopicPartition, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.rings = 0

    @property
    def subscribed(self) -> bool:
        """Whether rings are being received now (parking is off while they are not)."""
        return self._subscribed.is_set()

    def announced(self, tp: TopicPartition) -> int:
        """Highest offset announced for `tp`, -1 if none."""
        return self._announced.get(tp, -1)

    async def start(self, timeout_s: float = 5.0) -> None:
        """Subscribe; returns once subscribed or after `timeout_s` (then it keeps trying in the
        background and consumers fetch as without a doorbell meanwhile)."""
        self._task = asyncio.create_task(self._run(), name="doorbell-listener")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError:
            log.warning("doorbell not subscribed yet; fetching without it meanwhile")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def handle(self, channel: str | bytes, data: str | bytes) -> TopicPartition | None:
        """Record one ring; returns its partition, None if the message is not a ring."""
        topic = self._channels.get(channel.decode() if isinstance(channel, bytes) else channel)
        try:
            partition, offset = (int(x) for x in (data.decode() if isinstance(data, bytes) else data).split())
        except (ValueError, UnicodeDecodeError):
            # Safe: a malformed ring only costs latency (the safety fetch still reads the record).
            log.warning("ignoring a malformed doorbell ring", extra={"channel": str(channel)})
            return None
        if topic is None:
            return None
        tp = TopicPartition(topic, partition)
        if offset > self._announced.get(tp, -1):
            self._announced[tp] = offset
            self._announced_at[tp] = time.monotonic()
        self.rings += 1
        return tp

    def forget_if_stale(self, tp: TopicPartition, highwater: int | None, stale_s: float) -> bool:
        """Drop `tp`'s announcement if it is older than `stale_s` and the broker's end offset
        (`highwater`, from a fetch) is still not past it: that record was never written."""
        if highwater is None or self._announced.get(tp, -1) < highwater:
            return False
        if time.monotonic() - self._announced_at.get(tp, 0.0) < stale_s:
            return False
        log.warning("dropping a doorbell announcement the broker never reached", extra={"partition": str(tp)})
        self._announced[tp] = highwater - 1
        return True

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        if not self._subscribed.is_set():
                            self._subscribed.set()
                            self._on_ring(None)  # anything rung before this was missed
                        continue
                    if message["type"] != "message":
                        continue
                    tp = self.handle(message["channel"], message["data"])
                    if tp is not None:
                        self._on_ring(tp)
            except (RedisError, OSError) as exc:
                # Safe: while unsubscribed consumers do not park (they fetch as without a
                # doorbell), and after re-subscribing they fetch once for what was missed.
                log.warning("doorbell subscription lost; retrying", extra={"error": str(exc)})
            finally:
                self._subscribed.clear()
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass  # Safe: the connection is being dropped anyway
            await asyncio.sleep(_RESUBSCRIBE_BACKOFF_S)


class FetchParking:
    """Decides which partitions a consumer may keep paused because the doorbell says nothing is
    waiting in them (see the module docstring for the safety nets).

    Safety fetches follow the consumer's silence like its fetch waits do (kafka_clients.py): every
    `safety_interval_s` while records came within `deep_idle_after_s`, every
    `deep_safety_interval_s` after that, so an idle consumer asks the broker about as rarely as
    without a doorbell and a record nobody announced waits about as long as it would have."""

    def __init__(
        self,
        listener: DoorbellListener,
        *,
        safety_interval_s: float,
        hold_s: float,
        deep_idle_after_s: float,
        deep_safety_interval_s: float,
        grace_s: float = 0.05,
        on_unannounced: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self._on_unannounced = on_unannounced
        self.grace_s = grace_s
        self.safety_interval_s = safety_interval_s
        self.hold_s = hold_s
        self.deep_idle_after_s = deep_idle_after_s
        self.deep_safety_interval_s = max(deep_safety_interval_s, safety_interval_s)
        self._clock = clock
        self._safety_due = clock()  # fetch once first: records may predate the subscription
        self._unparked_until = 0.0
        self._last_record = clock()
        self.unannounced = 0
        #: Age after which an announcement beyond the broker's end offset is dropped.
        self.stale_s = 5.0
        #: Records read before any ring covered them: (highest offset, when), judged after grace_s.
        self._unconfirmed: dict[TopicPartition, tuple[int, float]] = {}
        self._recent = _RecentCount()

    @classmethod
    def from_settings(
        cls, listener: DoorbellListener, settings: ClusterSettings, *, on_unannounced: Callable[[], None] = lambda: None
    ) -> FetchParking:
        """Safety fetches as the settings say; unannounced records turn parking off for as long as
        a consumer stays busy after a record (`kafka_idle_after_s`); `on_unannounced` is told of
        each (for metrics)."""
        return cls(
            listener,
            safety_interval_s=settings.kafka_doorbell_safety_fetch_ms / 1000,
            hold_s=settings.kafka_idle_after_s,
            deep_idle_after_s=settings.kafka_deep_idle_after_s,
            deep_safety_interval_s=settings.kafka_deep_idle_fetch_max_wait_ms / 2000,
            # A ring may come after its record was read (a fetch already on its way, or the
            # trailing ring of a burst): wait well past the ring interval before judging.
            grace_s=max(0.05, 10 * settings.kafka_doorbell_ring_interval_ms / 1000),
            on_unannounced=on_unannounced,
        )

    def active(self) -> bool:
        """Whether partitions may be parked now: subscribed, not busy (`BUSY_RECORDS` within
        `BUSY_WINDOW_S`), no safety fetch due and no unannounced record within `hold_s`."""
        now = self._clock()
        return self._may_park(now) and now < self._safety_due

    def safety_due(self) -> bool:
        """Whether parking is off only for a safety fetch (the caller waits briefly, not long)."""
        now = self._clock()
        return self._may_park(now) and now >= self._safety_due

    def busy(self) -> bool:
        """Whether records come so fast that parking would only add churn."""
        return self._recent.busy(self._clock())

    def _may_park(self, now: float) -> bool:
        self._judge(now)
        return self.listener.subscribed and now >= self._unparked_until and not self._recent.busy(now)

    def parkable(
        self, positions: Mapping[TopicPartition, int], highwaters: Mapping[TopicPartition, int | None] | None = None
    ) -> set[TopicPartition]:
        """Of the partitions with known positions, those read past everything announced (empty
        while parking is not active). With `highwaters` (the broker's end offsets from the last
        fetch), an announcement the broker has been past the end of for `stale_s` is dropped:
        rung by a producer that announces offsets it did not write, it would keep the partition
        fetching for good."""
        if not self.active():
            return set()
        parkable = set()
        for tp, position in positions.items():
            announced = self.listener.announced(tp)
            if announced < position:
                parkable.add(tp)
            elif highwaters is not None and self.listener.forget_if_stale(tp, highwaters.get(tp), self.stale_s):
                parkable.add(tp)
        return parkable

    def safety_window_s(self, fetch_wait_ms: int) -> float:
        """How long a safety fetch keeps the parked partitions fetching: two fetch waits and a
        millisecond, so that an empty answer has come back."""
        return 2 * fetch_wait_ms / 1000 + 0.001

    def read(self, tp: TopicPartition, last_offset: int, count: int = 1) -> None:
        """Records up to `last_offset` of `tp` were read. Any beyond what was announced is judged
        after `grace_s` (its ring may still be on its way): if no ring covers it by then, it came
        from a producer that does not ring, and parking stops for `hold_s`."""
        now = self._clock()
        self._last_record = now
        self._recent.add(now, count)
        if last_offset > self.listener.announced(tp):
            # The first unconfirmed read starts the grace period; later ones only raise the offset.
            highest, since = self._unconfirmed.get(tp, (last_offset, now))
            self._unconfirmed[tp] = (max(highest, last_offset), since)

    def _judge(self, now: float) -> None:
        for tp, (offset, since) in list(self._unconfirmed.items()):
            if self.listener.announced(tp) >= offset:
                del self._unconfirmed[tp]  # its ring came
            elif now - since >= self.grace_s:
                del self._unconfirmed[tp]
                self.unannounced += 1
                self._unparked_until = now + self.hold_s
                self._on_unannounced()

    def fetched(self) -> None:
        """A fetch round without parking ran: the safety fetch, if one was due, is done."""
        now = self._clock()
        if now >= self._safety_due:
            deep = now - self._last_record >= self.deep_idle_after_s
            self._safety_due = now + (self.deep_safety_interval_s if deep else self.safety_interval_s)

    def request_fetch(self) -> None:
        """Fetch once without parking as soon as possible (rings may have been missed)."""
        self._safety_due = self._clock()

    def next_safety_in(self) -> float:
        """Seconds until the next safety fetch (0 if due)."""
        return max(0.0, self._safety_due - self._clock())
