"""Routes ReplyEvents from this gateway instance's reply topic to the requests waiting for them.

One group-less consumer reads every partition of `<prefix>.replies.<instance>` from its end (only
replies to requests made by this process matter; a restarted gateway has no one waiting for older
ones). A request registers a :class:`ReplySubscription` *before* it is produced, so no reply can
arrive unclaimed. The router then keeps the promises of DESIGN.md §4 on the receiving side:

* duplicates are dropped: a delta whose `seq` is not above the last delivered one (a batcher that
  retried re-sends what was already sent), and anything after the terminal event;
* events for requests nobody waits for (finished, timed out, or never made here) are dropped as
  stale;
* records that cannot be parsed are dead-lettered and skipped.

The consumer blocks on Kafka fetches; nothing polls on a timer. While no request is waiting, the
reply partitions are paused, so an idle gateway sends no fetches at all: with the small
`fetch_max_wait_ms` that low latency needs on Tansu (which answers a fetch only when that time is
up), an unpaused consumer fetches about 200 times a second, about a tenth of a core measured idle.
Nothing is lost by pausing: the position stays, and whatever arrived meanwhile (late replies to
finished requests) is read and dropped as stale on resume.

With the doorbell (shared/doorbell.py, `LGC_KAFKA_DOORBELL`), the partitions stay paused even
while requests wait, as long as everything the batchers announced has been read: a ring resumes
them and the fetch that follows finds the reply at the broker's first read, instead of waiting
for the next read of a fetch already in flight. A timer runs the doorbell's safety fetches.

Broker hiccups are ridden out by aiokafka's reconnects; anything else is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from shared.background_tasks import cancel_and_wait
from shared.deadletter import publish_dead_letter
from shared.doorbell import DoorbellListener, FetchParking
from shared.kafka_clients import make_consumer
from shared.records import ReplyEvent
from shared.settings import ClusterSettings

__all__ = ["ReplyRouter", "ReplyRouterStats", "ReplySubscription"]

log = logging.getLogger(__name__)

#: How long one fetch call may block before the loop goes round (it wakes at once on data).
_FETCH_BLOCK_MS = 30_000
#: Pause after an unexpected consumer failure, so a persistent fault does not spin the loop.
_ERROR_BACKOFF_S = 1.0


class ReplySubscription:
    """The events of one request, in order, without duplicates; filled by the router."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        self._last_delta_seq = -1
        self.finished = False
        """Whether the terminal event has been delivered."""

    def offer(self, event: ReplyEvent) -> bool:
        """Queue `event` unless it is a duplicate; returns whether it was queued."""
        if self.finished:
            return False
        if event.terminal:
            # The terminal event is taken whatever its seq: a retried generation may restart the
            # numbering, and a request must never be left without its end.
            self.finished = True
        elif event.seq <= self._last_delta_seq:
            return False
        else:
            self._last_delta_seq = event.seq
        self._queue.put_nowait(event)
        return True

    async def next_event(self) -> ReplyEvent:
        """The next event (blocks until there is one)."""
        return await self._queue.get()


@dataclass(slots=True)
class ReplyRouterStats:
    """What the router did with the records it read."""

    delivered: int = 0
    duplicates: int = 0
    stale: int = 0
    dead_lettered: int = 0


class ReplyRouter:
    """Reads one reply topic and feeds the subscriptions of waiting requests."""

    def __init__(
        self,
        settings: ClusterSettings,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        deadletter_topic: str,
        on_outcome: Callable[[str], None] | None = None,
        redis: Any = None,
    ) -> None:
        """`producer` (started by the caller) is used for dead letters; `on_outcome` is told
        `delivered`, `duplicate`, `stale` or `dead_lettered` for every record (for metrics);
        with `redis` (and `kafka_doorbell` on) the doorbell parks the partitions."""
        self._settings = settings
        self._producer = producer
        self.topic = topic
        self._deadletter_topic = deadletter_topic
        self._on_outcome = on_outcome or (lambda _outcome: None)
        self._subscriptions: dict[str, ReplySubscription] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._name = f"gateway-replies-{settings.instance_id}"
        self.stats = ReplyRouterStats()
        self.doorbell: DoorbellListener | None = None
        self.parking: FetchParking | None = None
        if redis is not None and settings.kafka_doorbell:
            self.doorbell = DoorbellListener(redis, [topic], on_ring=self._rung)
            self.parking = FetchParking.from_settings(self.doorbell, settings)
        #: Next offset to read per partition (what the doorbell's announcements are compared with).
        self._next_offset: dict[TopicPartition, int] = {}
        self._safety_timer: asyncio.TimerHandle | None = None
        self._safety_running = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Assign every partition of the topic at its end and start routing. When this returns,
        every reply produced afterwards will be seen."""
        consumer = make_consumer(
            self._settings, client_id=self._name, group_id=None, auto_offset_reset="latest"
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                await consumer.topics()  # refreshes metadata, in case the topic was just created
                partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise RuntimeError(f"reply topic {self.topic!r} does not exist")
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            # position() waits for the end offsets to be resolved: from here on nothing is missed.
            for tp in tps:
                self._next_offset[tp] = await consumer.position(tp)
            if self.doorbell is not None:
                await self.doorbell.start()
        except BaseException:
            # Start failed: release the consumer, then let the caller see why.
            await consumer.stop()
            raise
        self._consumer = consumer
        self._partitions = tps
        consumer.pause(*tps)
        self._update_pause()
        self._task = asyncio.create_task(self._run(), name="reply-router")
        log.info("reply router started", extra={"topic": self.topic, "partitions": len(tps)})

    async def stop(self) -> None:
        """Stop reading; waiting requests get nothing more."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._safety_timer is not None:
            self._safety_timer.cancel()
            self._safety_timer = None
        if self.doorbell is not None:
            await self.doorbell.stop()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def ready(self) -> bool:
        """Whether replies are being read."""
        return self._task is not None and not self._task.done()

    # ---- subscriptions ---------------------------------------------------------------------

    def subscribe(self, request_id: str) -> ReplySubscription:
        """Start collecting events for `request_id` (before the request is produced)."""
        if request_id in self._subscriptions:
            raise ValueError(f"request id {request_id!r} is already waiting for replies")
        subscription = ReplySubscription(request_id)
        self._subscriptions[request_id] = subscription
        self._update_pause()  # someone waits: fetch again (unless the doorbell parks)
        return subscription

    def unsubscribe(self, request_id: str) -> None:
        """Stop collecting; later events for the request are dropped as stale."""
        if self._subscriptions.pop(request_id, None) is not None and not self._subscriptions:
            self._update_pause()  # nobody waits: stop fetching

    # ---- fetching or paused ----------------------------------------------------------------

    def _update_pause(self) -> None:
        """Fetch while a request waits and the doorbell (if any) does not park the partitions;
        be paused otherwise."""
        consumer = self._consumer
        if consumer is None:
            return
        fetch = bool(self._subscriptions) and not self._parked_now()
        if fetch and consumer.paused():
            consumer.resume(*self._partitions)
        elif not fetch and not consumer.paused():
            consumer.pause(*self._partitions)
        self._arm_safety_timer()

    def _parked_now(self) -> bool:
        parking, consumer = self.parking, self._consumer
        if parking is None or consumer is None:
            return False
        highwaters = {tp: consumer.highwater(tp) for tp in self._partitions}
        return len(parking.parkable(self._next_offset, highwaters)) == len(self._partitions)

    def _arm_safety_timer(self) -> None:
        """While parked, a timer starts the next safety fetch; while one runs, a timer ends it
        after two fetch waits (an empty answer has come back by then)."""
        parking = self.parking
        if parking is None or not self._subscriptions or self._safety_timer is not None:
            return
        if parking.active():
            delay, self._safety_running = parking.next_safety_in(), False
        elif parking.safety_due():
            delay = parking.safety_window_s(self._settings.kafka_fetch_max_wait_ms)
            self._safety_running = True  # fetching now
        else:
            return  # not subscribed, or unannounced records lately: fetching as without a doorbell
        self._safety_timer = asyncio.get_running_loop().call_later(delay, self._on_safety_timer)

    def _on_safety_timer(self) -> None:
        self._safety_timer = None
        if self._safety_running and self.parking is not None:
            self.parking.fetched()  # the safety fetch's window is over: park again
        self._update_pause()  # or, at the end of a parked spell, start the safety fetch

    def _rung(self, tp: TopicPartition | None) -> None:
        """A doorbell ring (None: subscribed anew, so rings may have been missed)."""
        if tp is None and self.parking is not None:
            self.parking.request_fetch()
        self._update_pause()

    @property
    def paused(self) -> bool:
        """Whether fetching is paused (no request waiting)."""
        return self._consumer is not None and bool(self._consumer.paused())

    @property
    def waiting(self) -> int:
        """Requests currently waiting for replies."""
        return len(self._subscriptions)

    # ---- routing ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=_FETCH_BLOCK_MS)
            except asyncio.CancelledError:
                raise  # stop() asked for it
            except Exception:
                # Safe: aiokafka reconnects on its own and a failed fetch does not move the
                # position, so the next round reads the same records again.
                log.exception("reply router: reading the reply topic failed; retrying")
                await asyncio.sleep(_ERROR_BACKOFF_S)
                continue
            for tp, records in batches.items():
                if records:
                    self._next_offset[tp] = records[-1].offset + 1
                    if self.parking is not None:
                        self.parking.read(tp, records[-1].offset, len(records))
            if batches:
                # Park before anything awaits: the client sends its next fetch as soon as this one
                # is drained, and while that waits at the broker a ring's fetch cannot go out.
                self._update_pause()
            for records in batches.values():
                for record in records:
                    try:
                        await self.handle_record(record)
                    except Exception:
                        # Safe: one record that breaks routing must not stop the others; a
                        # request that lost its event ends by its deadline.
                        log.exception(
                            "reply router: could not route a record",
                            extra={"partition": record.partition, "offset": record.offset},
                        )

    async def handle_record(self, record: ConsumerRecord) -> str:
        """Route one record; returns what became of it."""
        try:
            if record.value is None:
                raise ValueError("record has no value")
            event = ReplyEvent.from_bytes(record.value)
        except (ValidationError, ValueError) as exc:
            # Safe to skip after dead-lettering: the bytes are kept in the dead-letter topic.
            await self._dead_letter(record, str(exc))
            return self._count("dead_lettered")
        subscription = self._subscriptions.get(event.request_id)
        if subscription is None:
            log.debug("dropping a stale reply", extra={"request_id": event.request_id, "seq": event.seq})
            return self._count("stale")
        if not subscription.offer(event):
            log.info(
                "dropping a duplicate reply",
                extra={"request_id": event.request_id, "seq": event.seq, "kind": event.kind.value},
            )
            return self._count("duplicate")
        return self._count("delivered")

    async def _dead_letter(self, record: ConsumerRecord, error: str) -> None:
        try:
            await publish_dead_letter(self._producer, self._deadletter_topic, record, error, consumer=self._name)
        except Exception:
            # Safe: the record cannot be routed either way; losing its copy is logged loudly.
            log.exception(
                "could not dead-letter an unparseable reply",
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
            )

    def _count(self, outcome: str) -> str:
        if outcome == "delivered":
            self.stats.delivered += 1
        elif outcome == "duplicate":
            self.stats.duplicates += 1
        elif outcome == "stale":
            self.stats.stale += 1
        else:
            self.stats.dead_lettered += 1
        self._on_outcome(outcome)
        return outcome
