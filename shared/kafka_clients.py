"""Kafka producer and consumer factories with options that work on Tansu and Apache Kafka alike.

Measured limits of the embedded Tansu broker (DESIGN.md §2) decide the defaults:

* The idempotent producer is refused (InitProducerId fails), so it is off. ``acks="all"`` still
  makes a send wait for the in-sync replicas; duplicates after a retry are dropped by consumers by
  request id and sequence number, which every consumer here does anyway.
* Tansu does not wake a waiting fetch when data arrives. It reads its storage when the fetch
  comes in and then again after half the wait, three quarters of it, and so on, answering at the
  first read that finds data or when the wait is over (load-tests/tansu_fetch_schedule.py: with
  a 100 ms wait, a record produced 5 ms after the fetch is answered at 54 ms, one produced at
  55 ms at 80 ms). So a record waits for the broker's next read of a waiting fetch, on average
  about a sixth of ``fetch_max_wait_ms``, and consumers on the serving path use the small
  ``LGC_KAFKA_FETCH_MAX_WAIT_MS`` (5 ms default). Each fetch costs both sides CPU (one idle
  consumer of 18 partitions fetching with a 5 ms wait: about half a core between the broker and
  the client), so an idle consumer must not keep that pace: :class:`AdaptiveFetchWait` lengthens
  the wait while no records come (a record that arrives after a long silence then waits up to
  half of ``LGC_KAFKA_DEEP_IDLE_FETCH_MAX_WAIT_MS``; see the class), and consumers that nobody
  waits on pause their partitions while idle. The optional doorbell (shared/doorbell.py) goes
  further: caught-up consumers stay paused until a producer announces a record.
* aiokafka's fetcher can leave a resumed partition unfetched for its 1 s safety timeout (a race
  of its "in flight" mark): every consumer made here is a :class:`ServiceConsumer`, which closes it.
* Offsets are always committed by hand (``enable_auto_commit=False``): each service decides when a
  record is done, which is the whole point of "no request is lost".

Both are configuration, not forks: on Apache Kafka the same code runs with larger waits.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.settings import ClusterSettings

__all__ = ["AdaptiveFetchWait", "ServiceConsumer", "make_consumer", "make_producer"]

#: How often aiokafka's background fetch routine wakes when nothing happened (its
#: `consumer_timeout_ms`, default 200). Everything it must react to (a fetch answered, records
#: consumed, a seek, a resume, a rebalance) already wakes it through a future; the timeout is only
#: a safety net, but at 200 ms each consumer re-planned its fetches 5 times a second, idle or not
#: (measured: 0.5 % of a core for an 18-partition consumer, 0.17 % at 1 s).
_FETCHER_SAFETY_WAKE_MS = 1_000


def make_producer(settings: ClusterSettings, *, client_id: str) -> AIOKafkaProducer:
    """A producer for records serialised by the caller (``Record.to_bytes()``); keys are str."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=settings.kafka_linger_ms,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        max_request_size=settings.kafka_max_record_bytes + 64 * 1024,
        key_serializer=_encode_key,
    )


class ServiceConsumer(AIOKafkaConsumer):
    """aiokafka's consumer with one race of its fetcher closed, and its stop() made safe with the
    broker gone (aiokafka is pinned; a test checks the attributes this relies on).

    The fetcher's background routine sends at most one fetch per broker, marking the broker "in
    flight" until the fetch task's done-callback clears the mark. When the routine is woken by
    something else (a resumed partition, records consumed) in the same loop turn as the fetch
    completes, it can see the task done, drop it from its pending set, and plan the next fetches
    before that callback has run: the broker still looks busy, no fetch is sent, and nothing wakes
    the routine again until its safety timeout (`consumer_timeout_ms`, 1 s here). Measured: with
    partitions paused and resumed every few milliseconds (the doorbell, shared/doorbell.py), 16
    clients through the gateway saw replies stall exactly 1 s in about half the 6 s runs (p99
    1,005-1,015 ms); the routine's own trace showed the plan made with the mark still set and no
    fetch in flight. Here the fetch task clears the mark itself before it completes.

    On `stop()` the fetcher cancels its fetch tasks and awaits them unguarded. A fetch that failed
    (the broker is unreachable) waits out its retry backoff outside aiokafka's own `except
    CancelledError`, so `stop()` raised CancelledError (chained to the NodeNotReadyError) and never
    closed the client (its metadata task went on retrying). Here a cancelled fetch returns False,
    as aiokafka's does when cancelled mid-send."""

    async def start(self) -> None:
        await super().start()
        fetcher = self._fetcher
        fetch = fetcher._proc_fetch_request  # noqa: SLF001 - see the class docstring

        async def fetch_then_clear(assignment: object, node_id: int, request: object) -> bool:
            try:
                return await fetch(assignment, node_id, request)
            except asyncio.CancelledError:
                # Safe: only the fetcher cancels its fetch tasks (closing, or the assignment
                # changed), and then wants no result: aiokafka returns False for a fetch cancelled
                # mid-send too. Raised, it escaped consumer.stop() (see the class docstring).
                return False
            finally:
                fetcher._in_flight.discard(node_id)  # noqa: SLF001 - before the task completes

        fetcher._proc_fetch_request = fetch_then_clear  # noqa: SLF001


def make_consumer(
    settings: ClusterSettings,
    *topics: str,
    client_id: str,
    group_id: str | None,
    auto_offset_reset: str = "earliest",
    max_poll_records: int = 500,
) -> AIOKafkaConsumer:
    """A consumer with manual commits and low-latency fetches.

    ``group_id=None`` makes a group-less consumer (for broadcast topics such as cancellations and
    for reply topics), which must be given partitions with ``assign()`` or subscribe to topics.
    """
    return ServiceConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        max_poll_records=max_poll_records,
        max_partition_fetch_bytes=settings.kafka_max_record_bytes + 64 * 1024,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, 40_000),
        # Rebalances must not wait for a long generation: the consumer loop never blocks on one.
        max_poll_interval_ms=300_000,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.kafka_session_timeout_ms // 3),
        consumer_timeout_ms=_FETCHER_SAFETY_WAKE_MS,
    )


def _encode_key(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


class AdaptiveFetchWait:
    """Short fetch waits while records flow, longer ones the longer a consumer hears nothing.

    On Tansu a record waits for the broker's next read of the waiting fetch, up to half of
    `fetch_max_wait_ms` (see the module docstring), so a consumer that must react in milliseconds
    keeps that wait short; with a constant short wait it would ask the broker about 150 times a
    second forever, costing both processes CPU while the cluster is idle (measured: a fetch of 18
    partitions, as the batcher's request topics had at 6 partitions each, cost Tansu about 3 ms
    of CPU, so 10 fetches a second were 3 % of a core). The consumer's loop
    reports what each poll returned, and the wait follows the silence since the last record:

    * records within `idle_after_s`: `busy_ms` (latency first);
    * silent for `idle_after_s`: `idle_ms` (between requests; the next one waits up to this long);
    * silent for `deep_idle_after_s`: `deep_idle_ms` (an idle cluster; the first record after it
      waits up to this long before the consumer sees it).

    The first record brings the wait straight back to `busy_ms`, so a steady stream of records
    never sees the longer waits; the first record after a silence waits for the broker's next read
    of the long fetch then in flight (up to half its wait). On Apache Kafka a fetch returns as soon
    as data arrives, so the longer waits cost no latency there at all.

    aiokafka reads the wait from its fetcher for every new fetch request, and offers no public
    setter, so this sets the fetcher's attribute (aiokafka is pinned; a test checks it exists).
    A change applies from the next fetch: the one in flight keeps the wait it was sent with.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        busy_ms: int,
        idle_ms: int,
        idle_after_s: float,
        deep_idle_ms: int | None = None,
        deep_idle_after_s: float | None = None,
    ) -> None:
        self._consumer = consumer
        self.busy_ms = busy_ms
        self.idle_ms = max(idle_ms, busy_ms)
        self.idle_after_s = idle_after_s
        self.deep_idle_ms = self.idle_ms if deep_idle_ms is None else max(deep_idle_ms, self.idle_ms)
        self.deep_idle_after_s = idle_after_s if deep_idle_after_s is None else max(deep_idle_after_s, idle_after_s)
        self._last_record = time.monotonic()
        self.current_ms = busy_ms

    @classmethod
    def from_settings(cls, consumer: AIOKafkaConsumer, settings: ClusterSettings) -> AdaptiveFetchWait:
        """The three steps of a latency-critical consumer (the batcher's request topics)."""
        return cls(
            consumer,
            busy_ms=settings.kafka_fetch_max_wait_ms,
            idle_ms=settings.kafka_idle_fetch_max_wait_ms,
            idle_after_s=settings.kafka_idle_after_s,
            deep_idle_ms=settings.kafka_deep_idle_fetch_max_wait_ms,
            deep_idle_after_s=settings.kafka_deep_idle_after_s,
        )

    @classmethod
    def off_serving_path(cls, consumer: AIOKafkaConsumer, settings: ClusterSettings, *, busy_ms: int) -> AdaptiveFetchWait:
        """A consumer no request waits on (e.g. the guardian's results): `busy_ms` while records
        flow, the deep-idle wait after `kafka_idle_after_s` of silence."""
        return cls(
            consumer,
            busy_ms=busy_ms,
            idle_ms=settings.kafka_deep_idle_fetch_max_wait_ms,
            idle_after_s=settings.kafka_idle_after_s,
        )

    def polled(self, records: int) -> None:
        """Report how many records the last poll returned."""
        now = time.monotonic()
        if records:
            self._last_record = now
            self._set(self.busy_ms)
            return
        silent_s = now - self._last_record
        if silent_s >= self.deep_idle_after_s:
            self._set(self.deep_idle_ms)
        elif silent_s >= self.idle_after_s:
            self._set(self.idle_ms)

    def keep_busy(self) -> None:
        """Use `busy_ms` without counting a record: a consumer parked by the doorbell
        (shared/doorbell.py) sends only fetches that find data at once (after a ring) and safety
        fetches, and a longer one in flight would hold back the next ring's fetch."""
        self._set(self.busy_ms)

    def _set(self, wait_ms: int) -> None:
        if wait_ms != self.current_ms:
            fetcher = self._consumer._fetcher  # noqa: SLF001 - see the class docstring
            if fetcher is not None:
                fetcher._fetch_max_wait_ms = wait_ms  # noqa: SLF001
            self.current_ms = wait_ms
