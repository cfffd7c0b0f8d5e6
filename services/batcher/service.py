"""The batcher service: consumes the priority request topics and keeps the workers busy.

The consume loop is four numbered steps, each blocking on Kafka or asyncio, never spinning:

1. wait for credit (requests this batcher may hold: the workers' batch slots times
   `batcher_credits_per_slot`, at most `batcher_max_inflight`); without credit the partitions are
   paused so the backlog stays in Kafka, not in memory;
2. fetch what credit allows;
3. take each record: dead-letter what does not parse, end what is expired or already cancelled;
4. group the rest by model and sampling parameters, highest priority first, into micro-batches
   bounded by size and token budget, and hand each to the dispatcher as its own task.

Offsets are committed by a separate task, only up to the lowest request whose terminal reply is
out (see offset_tracker.py). Cancellations come from a group-less consumer, so every batcher
instance sees every one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.batcher.dispatcher import BatchDispatcher
from services.batcher.metrics import BatcherMetrics
from services.batcher.offset_tracker import OffsetTracker
from services.batcher.reply_publisher import ReplyPublisher
from services.batcher.request_state import RequestState
from services.batcher.settings import BatcherSettings
from services.batcher.worker_pool import WorkerPool
from shared.deadletter import publish_dead_letter
from shared.kafka_clients import AdaptiveFetchWait, make_consumer, make_producer
from shared.metrics import SnapshotPublisher
from shared.ops_server import OpsServer
from shared.protos import worker_pb2
from shared.records import Cancel, GenerationRequest, MetricsSnapshot, Priority
from shared.structured_logging import request_context
from shared.topics import Topics, ensure_topics
from shared.worker_registry import WorkerRegistry

__all__ = ["BatcherService"]

log = logging.getLogger(__name__)

_PRIORITY_ORDER = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
#: Cancellations remembered for requests this batcher has not taken (yet): a cancel can overtake
#: its request, and another instance may own it.
_REMEMBERED_CANCELS = 10_000


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: BatcherService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._service.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)})


class BatcherService:
    """One batcher instance."""

    def __init__(self, settings: BatcherSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.metrics = BatcherMetrics(registry or CollectorRegistry())
        self.pool = WorkerPool(settings.batcher_lb_policy)
        self.tracker = OffsetTracker()
        self.states: dict[str, RequestState] = {}
        self._cancelled: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._credit = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self._stopping = False
        self._ready = False
        self._paused = False
        self.producer = make_producer(settings, client_id=f"batcher-{settings.instance_id}")
        self.consumer: AIOKafkaConsumer = make_consumer(
            settings, client_id=f"batcher-{settings.instance_id}", group_id=settings.batcher_group_id,
            max_poll_records=settings.batcher_max_inflight,
        )
        # Cancellations tolerate a little latency; a longer wait keeps an idle batcher idle.
        cancel_settings = settings.model_copy(update={"kafka_fetch_max_wait_ms": settings.kafka_idle_fetch_max_wait_ms})
        self.cancel_consumer = make_consumer(
            cancel_settings, self.topics.cancellations, client_id=f"batcher-cancel-{settings.instance_id}",
            group_id=None, auto_offset_reset="latest",
        )
        self.redis = aioredis.from_url(settings.redis_url)
        self.registry = WorkerRegistry(self.redis, prefix=settings.topic_prefix)
        self.publisher = ReplyPublisher(self.producer, self.topics)
        self.dispatcher = BatchDispatcher(settings, self.pool, self.publisher, self.metrics, self._finished)
        self.ops = OpsServer(settings.batcher_host, settings.batcher_metrics_port, self.metrics.registry, self.ready)

    # -- lifecycle -------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._ready and not self._stopping

    async def start(self) -> None:
        await self.ops.start()
        await ensure_topics(self.settings, self.topics.cluster_topics(self.settings))
        await self.producer.start()
        self.consumer.subscribe(list(self.topics.all_requests), listener=_Rebalance(self))
        await self.consumer.start()
        self._fetch_wait = AdaptiveFetchWait.from_settings(self.consumer, self.settings)
        await self.cancel_consumer.start()
        await self._sync_workers()
        snapshots = SnapshotPublisher(self.producer, self.topics.metrics, self.snapshot, self.settings.metrics_interval_s)
        self._background = [
            asyncio.create_task(self._consume_loop(), name="consume"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._cancel_loop(), name="cancellations"),
            asyncio.create_task(self.registry.watch(self._sync_workers, self.settings.batcher_registry_refresh_s), name="registry"),
            asyncio.create_task(snapshots.run(), name="snapshots"),
        ]
        self._ready = True
        log.info("batcher started", extra={"group": self.settings.batcher_group_id, "workers": len(self.pool)})

    async def stop(self) -> None:
        """Stop taking work, let in-flight requests finish (bounded), commit, close."""
        self._stopping = True
        self._credit.set()
        consume = self._background[0] if self._background else None
        if consume is not None:
            consume.cancel()
            await asyncio.gather(consume, return_exceptions=True)
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.batcher_shutdown_grace_s)
            for task in pending:
                task.cancel()  # their requests are replayed from the last committed offset
            await asyncio.gather(*pending, return_exceptions=True)
        await self._commit()
        for task in self._background[1:]:
            task.cancel()
        await asyncio.gather(*self._background[1:], return_exceptions=True)
        for closer in (self.consumer.stop, self.cancel_consumer.stop, self.producer.stop, self.pool.close, self.redis.aclose, self.ops.stop):
            try:
                await closer()
            except Exception:
                # Safe: shutting down; one client failing to close must not keep the others open.
                log.warning("error while closing", exc_info=True)
        log.info("batcher stopped")

    # -- 1. credit --------------------------------------------------------------------------------

    def credits(self) -> int:
        slots = int(self.pool.capacity() * self.settings.batcher_credits_per_slot)
        return max(0, min(self.settings.batcher_max_inflight, slots) - len(self.states))

    def _update_credit(self) -> None:
        credits = self.credits()
        self.metrics.credits.set(credits)
        self.metrics.inflight.set(len(self.states))
        if credits > 0:
            self._credit.set()
        else:
            self._credit.clear()

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        assignment = list(self.consumer.assignment())
        if paused:
            self.consumer.pause(*assignment)
        else:
            self.consumer.resume(*assignment)
        self._paused = paused
        self.metrics.paused.set(1 if paused else 0)

    async def _consume_loop(self) -> None:
        while not self._stopping:
            self._update_credit()
            if not self._credit.is_set():
                # Keep the backlog in Kafka. getmany() on paused partitions returns nothing but
                # keeps this member alive in the group (max_poll_interval).
                self._set_paused(True)
                try:
                    await asyncio.wait_for(self._credit.wait(), timeout=10)
                except TimeoutError:
                    await self.consumer.getmany(timeout_ms=0)
                continue
            self._set_paused(False)
            # -- 2. fetch ---------------------------------------------------------------------
            batches = await self.consumer.getmany(timeout_ms=1_000, max_records=self.credits())
            self._fetch_wait.polled(sum(len(r) for r in batches.values()))
            if not batches:
                continue
            # -- 3. take ----------------------------------------------------------------------
            taken: list[RequestState] = []
            for tp, records in batches.items():
                for record in records:
                    state = await self._take(tp, record)
                    if state is not None:
                        taken.append(state)
            # -- 4. group and dispatch --------------------------------------------------------
            for batch in self._micro_batches(taken):
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
        state = RequestState(request=request, priority=priority, tp=tp, offset=record.offset)
        self.states[request.id] = state
        state.cancelled = self._cancelled.pop(request.id, None)
        with request_context(request.id):
            log.debug("request taken", extra={"priority": priority.value, "offset": record.offset})
        return state

    def _micro_batches(self, states: Iterable[RequestState]) -> list[list[RequestState]]:
        """Group by (model, sampling parameters); split by size and token budget; high first."""
        groups: dict[tuple[object, ...], list[RequestState]] = {}
        for state in sorted(states, key=lambda s: (_PRIORITY_ORDER[s.priority], s.request.created_at)):
            key = (_PRIORITY_ORDER[state.priority], state.request.model, state.request.params.group_key())
            groups.setdefault(key, []).append(state)
        batches: list[list[RequestState]] = []
        size, budget = self.settings.batcher_max_batch_size, self.settings.batcher_token_budget
        for key in sorted(groups, key=lambda k: k[0]):  # type: ignore[arg-type, return-value]
            current: list[RequestState] = []
            tokens = 0
            for state in groups[key]:
                need = state.request.params.max_new_tokens
                if current and (len(current) >= size or tokens + need > budget):
                    batches.append(current)
                    current, tokens = [], 0
                current.append(state)
                tokens += need
            if current:
                batches.append(current)
        return batches

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Every request of a batch ends inside dispatcher.run; an exception here is a bug or a
            # broker failure while publishing. Its requests stay uncommitted and are replayed.
            log.error("micro-batch failed", exc_info=task.exception())

    def _finished(self, state: RequestState) -> None:
        """Called once a request's terminal reply is published."""
        self.states.pop(state.id, None)
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
        if worker is not None:
            try:
                await worker.stub.Cancel(worker_pb2.CancelRequest(request_ids=[request_id]), timeout=5)
            except Exception:
                # Safe: if the worker cannot be told, the request still ends when the worker
                # finishes it or its stream breaks; it is marked cancelled and answered as such.
                log.warning("could not forward a cancellation to the worker", exc_info=True)

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

