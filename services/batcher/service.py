"""The batcher service: consumes the priority request topics and keeps the workers busy.

The consume loop is four numbered steps, each blocking on Kafka or asyncio, never spinning:

1. plan: credits (requests this batcher may hold: the workers' batch slots times
   `batcher_credits_per_slot`, at most `batcher_max_inflight`) and the priority rule of
   priority_admission.py decide which levels may take records and how many; the other levels'
   partitions are paused, so their backlog stays in Kafka, not in memory;
2. fetch level by level in plan order (what the client already buffered first, then a blocking
   fetch on every admitted partition);
3. take each record: dead-letter what does not parse, end what is expired or already cancelled;
4. put the rest into micro-batches (batch_former.py: grouped by priority, model and sampling
   parameters, bounded by size, token budget and max wait) and hand each closed batch to the
   dispatcher as its own task, highest priority first.

Offsets are committed by a separate task, only up to the lowest request whose terminal reply is
out (see offset_tracker.py). Cancellations come from a group-less consumer, so every batcher
instance sees every one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.batcher.answer_guard import AnswerGuard
from services.batcher.batch_former import PRIORITY_RANK, BatchFormer
from services.batcher.dispatcher import BatchDispatcher
from services.batcher.metrics import BatcherMetrics
from services.batcher.offset_tracker import OffsetTracker
from services.batcher.priority_admission import LEVELS, PriorityAdmission
from services.batcher.reply_publisher import ReplyPublisher
from services.batcher.request_state import RequestState
from services.batcher.settings import BatcherSettings
from services.batcher.worker_pool import WorkerPool
from shared.blocking_tenants import BlockingTenants
from shared.deadletter import publish_dead_letter
from shared.doorbell import DoorbellListener, DoorbellRinger, FetchParking
from shared.guardian_check import GuardianCheckClient
from shared.kafka_clients import AdaptiveFetchWait, make_consumer, make_producer
from shared.metrics import SnapshotPublisher
from shared.ops_server import OpsServer
from shared.records import Cancel, GenerationRequest, MetricsSnapshot, Priority
from shared.structured_logging import request_context
from shared.topics import Topics, ensure_topics
from shared.worker_registry import WorkerRegistry

__all__ = ["BatcherService"]

log = logging.getLogger(__name__)

#: Longest an aged level's exclusive fetch waits for its records (see priority_admission.py).
_AGED_PROBE_MS = 100
#: Cancellations remembered for requests this batcher has not taken (yet): a cancel can overtake
#: its request, and another instance may own it.
_REMEMBERED_CANCELS = 10_000


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: BatcherService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._service.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._service.wake()
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)})


class BatcherService:
    """One batcher instance."""

    def __init__(self, settings: BatcherSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.metrics = BatcherMetrics(registry or CollectorRegistry())
        self.pool = WorkerPool(
            settings.batcher_lb_policy,
            saturation=settings.batcher_affinity_saturation,
            close_grace_s=settings.batcher_rpc_timeout_s,
        )
        self.admission = PriorityAdmission(
            normal_share=settings.batcher_normal_credit_share,
            low_share=settings.batcher_low_credit_share,
            aging_s=settings.batcher_aging_s,
            high_active_s=settings.batcher_high_active_s,
        )
        self.former = BatchFormer(
            max_size=settings.batcher_max_batch_size,
            token_budget=settings.batcher_token_budget,
            max_wait_s=settings.batcher_max_wait_ms / 1000,
        )
        self.tracker = OffsetTracker()
        self.states: dict[str, RequestState] = {}
        #: Requests held per priority (the same as counting `states`, kept as it changes).
        self._inflight: dict[Priority, int] = dict.fromkeys(LEVELS, 0)
        self._cancelled: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        #: Set when the consume loop should re-plan (a request ended, partitions were assigned).
        self._wake = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self._stopping = False
        self._ready = False
        self._paused = False
        self._cancel_wait: AdaptiveFetchWait | None = None
        self.producer = make_producer(settings, client_id=f"batcher-{settings.instance_id}")
        self.consumer: AIOKafkaConsumer = make_consumer(
            settings, client_id=f"batcher-{settings.instance_id}", group_id=settings.batcher_group_id,
            max_poll_records=settings.batcher_max_inflight,
        )
        # Cancellations tolerate a little latency; a longer wait keeps an idle batcher idle (and
        # longer still once it has held no request for a while: see _update_credit).
        cancel_settings = settings.model_copy(update={"kafka_fetch_max_wait_ms": settings.kafka_idle_fetch_max_wait_ms})
        self.cancel_consumer = make_consumer(
            cancel_settings, self.topics.cancellations, client_id=f"batcher-cancel-{settings.instance_id}",
            group_id=None, auto_offset_reset="latest",
        )
        self.redis = aioredis.from_url(settings.redis_url)
        self.registry = WorkerRegistry(self.redis, prefix=settings.topic_prefix)
        # The doorbell (shared/doorbell.py): replies are announced to the gateways; request
        # partitions read past everything announced are parked (paused) until the next ring.
        self.ringer = DoorbellRinger.from_settings(self.redis, settings)
        self.doorbell: DoorbellListener | None = None
        self.parking: FetchParking | None = None
        if settings.kafka_doorbell:
            self.doorbell = DoorbellListener(self.redis, self.topics.all_requests, on_ring=self._rung)
            self.parking = FetchParking.from_settings(
                self.doorbell, settings, on_unannounced=self.metrics.unannounced_reads.inc
            )
        #: Partitions paused by the doorbell only (not by priority admission).
        self._parked: set[TopicPartition] = set()
        self.publisher = ReplyPublisher(self.producer, self.topics, ringer=self.ringer)
        self.guard = AnswerGuard(
            BlockingTenants(self.redis, prefix=settings.topic_prefix),
            GuardianCheckClient(settings.batcher_guardian_url, timeout_s=settings.batcher_guard_timeout_s),
            refresh_s=settings.batcher_blocking_tenants_refresh_s,
            on_judged=lambda outcome: self.metrics.held_answers.labels(outcome).inc(),
        )
        self.dispatcher = BatchDispatcher(settings, self.pool, self.publisher, self.metrics, self._finished, self.guard)
        self.ops = OpsServer(settings.batcher_host, settings.batcher_metrics_port, self.metrics.registry, self.ready)

    # -- lifecycle -------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._ready and not self._stopping

    @property
    def parked(self) -> frozenset[TopicPartition]:
        """Request partitions paused by the doorbell (read past everything announced)."""
        return frozenset(self._parked)

    async def start(self) -> None:
        await self.ops.start()
        await ensure_topics(self.settings, self.topics.cluster_topics(self.settings))
        await self.producer.start()
        self.consumer.subscribe(list(self.topics.all_requests), listener=_Rebalance(self))
        await self.consumer.start()
        self._fetch_wait = AdaptiveFetchWait.from_settings(self.consumer, self.settings)
        if self.doorbell is not None:
            await self.doorbell.start()
        await self.cancel_consumer.start()
        self._cancel_wait = AdaptiveFetchWait.off_serving_path(
            self.cancel_consumer, self.settings, busy_ms=self.settings.kafka_idle_fetch_max_wait_ms
        )
        await self._sync_workers()
        # Before the first request is taken: a blocking tenant's answer must never slip out.
        await self.guard.refresh()
        snapshots = SnapshotPublisher(self.producer, self.topics.metrics, self.snapshot, self.settings.metrics_interval_s)
        self._background = [
            asyncio.create_task(self._consume_loop(), name="consume"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._cancel_loop(), name="cancellations"),
            asyncio.create_task(self.registry.watch(self._sync_workers, self.settings.batcher_registry_refresh_s), name="registry"),
            asyncio.create_task(snapshots.run(), name="snapshots"),
            asyncio.create_task(self.guard.refresh_forever(), name="blocking-tenants"),
        ]
        self._ready = True
        log.info("batcher started", extra={"group": self.settings.batcher_group_id, "workers": len(self.pool)})

    async def stop(self) -> None:
        """Stop taking work, let in-flight requests finish (bounded), commit, close."""
        self._stopping = True
        self._wake.set()
        consume = self._background[0] if self._background else None
        if consume is not None:
            consume.cancel()
            await asyncio.gather(consume, return_exceptions=True)
        self._dispatch(self.former.due(flush=True))  # taken requests still forming run too
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.batcher_shutdown_grace_s)
            for task in pending:
                task.cancel()  # their requests are replayed from the last committed offset
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            # Bounded: aiokafka retries a commit for as long as the group coordinator is unknown
            # or answers with a retriable error, so with the broker gone this awaited forever and
            # the batcher never stopped. Offsets left uncommitted only mean a replay (deduplicated).
            await asyncio.wait_for(self._commit(), timeout=self.settings.kafka_request_timeout_ms / 1000)
        except TimeoutError:
            log.warning("final offset commit timed out; the new owner replays the uncommitted requests")
        if self.doorbell is not None:
            await self.doorbell.stop()
        if self.ringer is not None:
            await self.ringer.aclose()  # the last replies' rings, before Redis closes
        for task in self._background[1:]:
            task.cancel()
        await asyncio.gather(*self._background[1:], return_exceptions=True)
        for closer in (self.consumer.stop, self.cancel_consumer.stop, self.producer.stop, self.pool.close, self.guard.aclose, self.redis.aclose, self.ops.stop):
            try:
                await closer()
            except Exception:
                # Safe: shutting down; one client failing to close must not keep the others open.
                log.warning("error while closing", exc_info=True)
        log.info("batcher stopped")

    # -- 1. credit --------------------------------------------------------------------------------

    def total_credits(self) -> int:
        """Requests this batcher may hold when it holds none."""
        slots = int(self.pool.capacity() * self.settings.batcher_credits_per_slot)
        return min(self.settings.batcher_max_inflight, slots)

    def credits(self) -> int:
        return max(0, self.total_credits() - len(self.states))

    def wake(self) -> None:
        """Make the consume loop re-plan now."""
        self._wake.set()

    def _update_credit(self) -> None:
        credits = self.credits()
        self.metrics.credits.set(credits)
        self.metrics.inflight.set(len(self.states))
        if self._cancel_wait is not None:
            # Cancellations matter only while requests are held: after `kafka_idle_after_s` with
            # none, they are fetched with the deep-idle wait (a cancellation that comes then is
            # still read within that wait and remembered for its request).
            self._cancel_wait.polled(len(self.states))
        if credits > 0:
            self._wake.set()  # a credit freed up (or workers joined): re-plan

    # -- priority: which partitions may be fetched ------------------------------------------

    def _partitions(self) -> dict[Priority, list[TopicPartition]]:
        by_level: dict[Priority, list[TopicPartition]] = {p: [] for p in LEVELS}
        for tp in self.consumer.assignment():
            by_level[self.topics.priority_of(tp.topic)].append(tp)
        return by_level

    async def _backlog(self, partitions: list[TopicPartition], paused: set[TopicPartition]) -> bool | None:
        """True if records wait in Kafka (or in the client's buffer) on any of `partitions`, False
        if none do, None if unknown (paused, or no fetch answered yet)."""
        if not partitions:
            return False
        unknown = False
        for tp in partitions:
            if tp in self._parked:
                continue  # read past everything announced: a ring would have resumed it
            high = self.consumer.highwater(tp)
            if tp in paused or high is None:
                unknown = True
                continue
            # A known highwater means a fetch ran, so the position is valid and this is immediate.
            try:
                if high > await self.consumer.position(tp):
                    return True
            except IllegalStateError:
                unknown = True  # Safe: revoked by a rebalance meanwhile; the next round re-plans
        return None if unknown else False

    async def _apply_pauses(self, by_level: dict[Priority, list[TopicPartition]], admitted: set[Priority]) -> None:
        """Resume the admitted levels (and high always, see priority_admission.py); pause the rest,
        and park (pause) admitted partitions the doorbell says are read to the end."""
        assignment = self.consumer.assignment()
        want_paused = {
            tp for p, tps in by_level.items() if p is not Priority.HIGH and p not in admitted for tp in tps
        }
        want_paused &= assignment  # a rebalance may have run since by_level was read
        parked: set[TopicPartition] = set()
        if self.parking is not None and self.parking.active():
            # Only partitions fetched before: their position is resolved, so position() is
            # immediate (an unresolved one would wait for the broker).
            positions = {
                tp: await self.consumer.position(tp)
                for tp in assignment - want_paused
                if self.consumer.highwater(tp) is not None
            }
            parked = self.parking.parkable(positions, {tp: self.consumer.highwater(tp) for tp in positions})
        self._parked = parked
        self.metrics.parked_partitions.set(len(parked))
        self._paused = bool(want_paused)
        want_paused |= parked
        paused = self.consumer.paused()
        if want_paused - paused:
            self.consumer.pause(*(want_paused - paused))
        if paused - want_paused:
            self.consumer.resume(*(paused - want_paused))
        for p in LEVELS:
            self.metrics.paused.labels(p.value).set(1 if p is not Priority.HIGH and p not in admitted and by_level[p] else 0)

    def _park_read(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Park, before anything awaits, the partitions a fetch just read past everything
        announced: the client sends its next fetch as soon as this one is drained, and while that
        waits at the broker a ring's fetch cannot go out (one fetch in flight per broker)."""
        if self.parking is None or not batches or not self.parking.active():
            return
        read_to = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        park = (self.parking.parkable(read_to) & self.consumer.assignment()) - self.consumer.paused()
        if park:
            self.consumer.pause(*park)
            self._parked |= park

    def _rung(self, tp: TopicPartition | None) -> None:
        """A doorbell ring (None: subscribed anew, rings may have been missed): resume the
        partition if it is parked, and re-plan (a ring is also known backlog)."""
        if self.parking is None:
            return
        self.metrics.doorbell_rings.inc()
        if tp is None:
            self.parking.request_fetch()
        elif tp in self._parked:
            self._parked.discard(tp)
            if tp in self.consumer.assignment():
                self.consumer.resume(tp)  # a blocked getmany() now receives the record
        self._wake.set()

    def _inflight_by_level(self) -> dict[Priority, int]:
        return dict(self._inflight)

    async def _consume_loop(self) -> None:
        while not self._stopping:
            try:
                await self._consume_round()
            except asyncio.CancelledError:
                raise
            except IllegalStateError:
                # Safe: a rebalance changed the assignment in the middle of a round; nothing was
                # taken from the partitions involved, so the next round simply re-plans.
                log.info("assignment changed during a fetch round; re-planning")
            except Exception:
                # Safe: records not yet taken stay in Kafka and taken ones are in `states` (they
                # end through their dispatch tasks); a crashed loop would stop consumption for
                # good while the batcher still looked ready, so log, pause briefly and go on.
                log.exception("consume round failed; retrying")
                await asyncio.sleep(0.5)

    async def _consume_round(self) -> None:
        """One plan -> fetch -> take -> group round (see the module docstring)."""
        self._update_credit()
        credit = self.credits()
        by_level = self._partitions()
        paused = self.consumer.paused()
        backlog = {p: await self._backlog(by_level[p], paused) for p in LEVELS}
        plan = self.admission.plan(
            credit=credit,
            total=self.total_credits(),
            inflight=self._inflight_by_level(),
            backlog=backlog,
            batch_size=self.settings.batcher_max_batch_size,
        )
        plan_levels = [lv for lv in plan.levels if by_level[lv.priority]]
        # A safety fetch of parked partitions is due: this round fetches them, briefly.
        safety = self.parking is not None and self.parking.safety_due()
        await self._apply_pauses(by_level, {lv.priority for lv in plan_levels} | plan.aged)
        if credit == 0 or not plan_levels:
            # Nothing may be taken: whatever is forming cannot grow when credit is out, so it
            # goes now; then wait for a credit (a request ends), a batch to fall due or a new
            # assignment, without touching Kafka (its backlog stays there).
            self._dispatch(self.former.due(flush=credit == 0, flush_models=self.pool.models_with_free_slots()))
            self._wake.clear()
            timeout = self.former.next_due_in()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0 if timeout is None else timeout)
            except TimeoutError:
                pass  # Safe: the loop re-plans (new assignment, batch due, keep-alive)
            return
        # -- 2. fetch, level by level: first what the client already buffered, by plan order --
        taken: list[RequestState] = []
        for level in plan_levels:
            room = min(level.allowance, credit - len(taken))
            if room <= 0:
                break
            batches = await self.consumer.getmany(*by_level[level.priority], timeout_ms=0, max_records=room)
            self._park_read(batches)
            if not batches and level.aged and backlog[level.priority] is not False:
                # Aged but nothing buffered yet (just resumed): a short fetch of its own, so
                # the credit is not taken by a higher level again before its records arrive.
                batches = await self.consumer.getmany(
                    *by_level[level.priority], timeout_ms=_AGED_PROBE_MS, max_records=room
                )
                self._park_read(batches)
            got = await self._take_all(level.priority, batches)
            if level.aged and batches:
                self.metrics.aging_waits.labels(level.priority.value).inc()
            taken += got
        if not taken:
            # Nothing buffered: block on every admitted partition until records come, the
            # oldest forming batch falls due, or (when a lower level waits only on an unknown
            # backlog) briefly, to re-plan with fresh highwaters.
            wait_s = self.former.next_due_in()
            wait_s = 1.0 if wait_s is None else wait_s
            if plan.uncertain:
                wait_s = min(wait_s, 0.05)
            if safety:
                wait_s = min(wait_s, self.parking.safety_window_s(self.settings.kafka_fetch_max_wait_ms))
            elif self.parking is not None and self.parking.active():
                wait_s = min(wait_s, max(self.parking.next_safety_in(), 0.001))
            room = min(credit, min(lv.allowance for lv in plan_levels))
            partitions = [tp for lv in plan_levels for tp in by_level[lv.priority]]
            batches = await self.consumer.getmany(*partitions, timeout_ms=math.ceil(wait_s * 1000), max_records=room)
            self._park_read(batches)
            for level in plan_levels:
                mine = {tp: recs for tp, recs in batches.items() if tp in set(by_level[level.priority])}
                taken += await self._take_all(level.priority, mine)
        self._fetch_wait.polled(len(taken))
        if self.parking is not None:
            if safety:
                self.parking.fetched()
            if self.parking.active() or self.parking.safety_due():
                # Parked, or about to fetch for safety: no long fetch may hold back a ring's
                # (after 30 s of silence the idle wait would be a second: measured, the first
                # request after an idle minute then took 561 ms).
                self._fetch_wait.keep_busy()
        # -- 4. group and dispatch ------------------------------------------------------------
        closed: list[list[RequestState]] = []
        for state in sorted(taken, key=lambda s: (PRIORITY_RANK[s.priority], s.request.created_at)):
            closed += self.former.add(state)
        closed += self.former.due(flush=self.credits() == 0, flush_models=self.pool.models_with_free_slots())
        self._dispatch(closed)

    async def _take_all(self, priority: Priority, batches: dict[TopicPartition, list[ConsumerRecord]]) -> list[RequestState]:
        taken: list[RequestState] = []
        count = 0
        for tp, records in batches.items():
            if self.parking is not None and records:
                self.parking.read(tp, records[-1].offset, len(records))
            for record in records:
                count += 1
                state = await self._take(tp, record)
                if state is not None:
                    taken.append(state)
        self.admission.took(priority, count)
        return taken

    def _dispatch(self, batches: list[list[RequestState]]) -> None:
        for batch in sorted(batches, key=lambda b: PRIORITY_RANK[b[0].priority]):
            task = asyncio.create_task(self.dispatcher.run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._batch_done)

    # -- 3. take ------------------------------------------------------------------------------

    async def _take(self, tp: TopicPartition, record: ConsumerRecord) -> RequestState | None:
        self.tracker.taken(tp, record.offset)
        try:
            request = GenerationRequest.from_bytes(record.value or b"")
            priority = self.topics.priority_of(tp.topic)
        except (ValidationError, ValueError) as exc:
            # Safe: the record cannot be served; its bytes and the reason go to the dead-letter
            # topic, after which its offset may be committed.
            await publish_dead_letter(
                self.producer, self.topics.deadletter, record, _short_error(exc), consumer=self.settings.batcher_group_id
            )
            self.metrics.deadlettered.labels(tp.topic).inc()
            self.tracker.finished(tp, record.offset)
            self._commit_wanted.set()
            return None
        if request.id in self.states:
            # A replay of a request this instance is still running (a rebalance handed the
            # partition back): the running one will answer; this copy is finished as a duplicate.
            self.tracker.finished(tp, record.offset)
            return None
        state = RequestState(
            request=request, priority=priority, tp=tp, offset=record.offset, held=self.guard.holds(request)
        )
        self.states[request.id] = state
        self._inflight[priority] += 1
        state.cancelled = self._cancelled.pop(request.id, None)
        with request_context(request.id):
            log.debug("request taken", extra={"priority": priority.value, "offset": record.offset})
        return state

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Every request of a batch ends inside dispatcher.run; an exception here is a bug or a
            # broker failure while publishing. Its requests stay uncommitted and are replayed.
            log.error("micro-batch failed", exc_info=task.exception())

    def _finished(self, state: RequestState) -> None:
        """Called once a request's terminal reply is published."""
        if self.states.pop(state.id, None) is not None:
            self._inflight[state.priority] -= 1
        self.tracker.finished(state.tp, state.offset)
        self._commit_wanted.set()
        self._update_credit()

    # -- commits ------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit()
            # Batch commits: at most ~20 per second however fast requests finish.
            await asyncio.sleep(0.05)

    async def _commit(self) -> None:
        offsets = self.tracker.commit_offsets()
        if not offsets:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self.tracker.mark_committed(offsets)
        except Exception:
            # Safe: nothing is marked committed, so the same offsets are offered again on the next
            # commit; at worst a crash now replays a few requests (duplicates are dropped downstream).
            log.warning("offset commit failed; will retry", exc_info=True)
            self._commit_wanted.set()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is finished on partitions we lose; their unfinished requests keep running
        here (their replies still go out) and are replayed by the new owner, then deduplicated."""
        await self._commit()
        self.tracker.forget(revoked)

    # -- cancellations ------------------------------------------------------------------------

    async def _cancel_loop(self) -> None:
        async for record in self.cancel_consumer:
            try:
                cancel = Cancel.from_bytes(record.value or b"")
            except ValidationError as exc:
                # Safe: a malformed cancellation names no request we could stop. It is not
                # dead-lettered here because every batcher instance reads this topic (each would
                # write a copy); it is logged instead.
                log.warning("ignoring a malformed cancellation", extra={"error": _short_error(exc)})
                continue
            await self.cancel(cancel.request_id, cancel.reason)

    async def cancel(self, request_id: str, reason: str) -> None:
        state = self.states.get(request_id)
        if state is None:
            self._cancelled[request_id] = reason
            while len(self._cancelled) > _REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)
            return
        state.cancelled = reason
        worker = self.dispatcher.running_on.get(request_id)
        with request_context(request_id):
            log.info("cancelling", extra={"reason": reason, "worker": worker.worker_id if worker else None})
            await self.dispatcher.cancel_on_worker(request_id)

    # -- workers and metrics ------------------------------------------------------------------

    async def _sync_workers(self) -> None:
        await self.pool.sync(await self.registry.list())
        self.metrics.workers.set(len(self.pool))
        for w in self.pool.workers:
            self.metrics.worker_outstanding.labels(w.worker_id).set(w.outstanding_requests)
        self._update_credit()

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            service="batcher",
            instance=self.settings.instance_id,
            values={
                "inflight": float(len(self.states)),
                "credits": float(self.credits()),
                "workers": float(len(self.pool)),
                "capacity": float(self.pool.capacity()),
                "paused": 1.0 if self._paused else 0.0,
            },
        )


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()[:10])
    return str(exc)[:1_000]

