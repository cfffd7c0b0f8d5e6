"""The batcher against a real Tansu broker, a real Redis registry and real (simulated-backend)
workers served over gRPC in this process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from services.batcher.service import BatcherService
from services.batcher.settings import BatcherSettings
from services.worker.service import WorkerService
from shared.deadletter import dead_letter_from_headers
from shared.kafka_clients import make_producer
from shared.launcher.infra import find_free_port, start_tansu
from shared.records import (
    Cancel,
    ErrorCode,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    Priority,
    ReplyEvent,
    ReplyKind,
)
from tests.services.batcher.harness import Harness, WorkerSpec, start_harness, worker_settings


@pytest.fixture
async def harness(cluster_settings) -> AsyncIterator[Harness]:
    async with start_harness(cluster_settings) as h:
        yield h


async def test_streams_deltas_then_one_final_and_a_result(harness: Harness) -> None:
    request = harness.request(stream=True)
    await harness.send(request)
    events = await harness.events_until_terminal(request.id)
    assert [e.seq for e in events] == list(range(len(events)))
    deltas, final = events[:-1], events[-1]
    assert deltas and all(e.kind is ReplyKind.DELTA for e in deltas)
    assert final.kind is ReplyKind.FINAL and final.finish_reason is FinishReason.LENGTH
    assert final.text == "".join(e.text for e in deltas)
    assert final.usage.completion_tokens == 8
    result = await harness.result_for(request.id)
    assert result.text == final.text and result.priority is Priority.NORMAL
    assert result.timings.total_ms is not None and result.worker_id in {"sim-0", "sim-1"}


async def test_non_streaming_gets_only_the_final_event(harness: Harness) -> None:
    request = harness.request(stream=False)
    await harness.send(request, Priority.HIGH)
    events = await harness.events_until_terminal(request.id)
    assert len(events) == 1 and events[0].kind is ReplyKind.FINAL and events[0].seq == 0


async def test_offsets_are_committed_after_the_final_reply(harness: Harness) -> None:
    requests = [harness.request() for _ in range(5)]
    for r in requests:
        await harness.send(r, Priority.LOW)
    finals = await harness.terminals({r.id for r in requests})
    assert all(e.kind is ReplyKind.FINAL for e in finals.values())
    low = harness.topics.requests(Priority.LOW)
    partitions = [TopicPartition(low, p) for p in range(harness.settings.request_topic_partitions)]
    consumer = harness.batcher.consumer
    deadline = time.monotonic() + 10
    while True:  # commits are batched; wait for the committer to catch up
        committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
        ends = await consumer.end_offsets(partitions)
        if all(committed[tp] == ends[tp] for tp in partitions) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert committed == ends
    assert sum(ends.values()) == 5


async def test_malformed_record_is_dead_lettered_and_the_next_is_served(harness: Harness) -> None:
    topic = harness.topics.requests(Priority.NORMAL)
    await harness.producer.send_and_wait(topic, b'{"id": "x y", "model": 3}', key="bad", partition=0)
    good = harness.request()
    await harness.producer.send_and_wait(topic, good.to_bytes(), key=good.id, partition=0)
    dead = await asyncio.wait_for(harness.dlq.getone(), 20)
    assert dead.value == b'{"id": "x y", "model": 3}'
    info = dead_letter_from_headers(dead.headers)
    assert info.topic == topic and "model" in info.error
    events = await harness.events_until_terminal(good.id)
    assert events[-1].kind is ReplyKind.FINAL


async def test_expired_request_is_answered_without_running(harness: Harness) -> None:
    request = harness.request(deadline=time.time() - 1)
    await harness.send(request)
    (event,) = await harness.events_until_terminal(request.id)
    assert event.kind is ReplyKind.ERROR and event.error.code is ErrorCode.DEADLINE_EXCEEDED
    result = await harness.result_for(request.id)
    assert result.error.code is ErrorCode.DEADLINE_EXCEEDED and result.worker_id is None


async def test_unknown_model_ends_with_model_not_found(harness: Harness) -> None:
    request = harness.request(model="no-such-model")
    await harness.send(request)
    (event,) = await harness.events_until_terminal(request.id)
    assert event.kind is ReplyKind.ERROR and event.error.code is ErrorCode.MODEL_NOT_FOUND


async def test_cancellation_stops_a_running_request(harness: Harness) -> None:
    request = harness.request(stream=True, params=GenerationParams(max_new_tokens=2_000))
    await harness.send(request)
    first = ReplyEvent.from_bytes((await asyncio.wait_for(harness.replies.getone(), 20)).value)
    assert first.request_id == request.id and first.kind is ReplyKind.DELTA
    await harness.producer.send_and_wait(
        harness.topics.cancellations, Cancel(request_id=request.id, reason="test").to_bytes(), key=request.id
    )
    events = await harness.events_until_terminal(request.id, timeout=10)
    assert events[-1].kind is ReplyKind.ERROR and events[-1].error.code is ErrorCode.CANCELLED
    assert sum(1 for e in events if e.kind is ReplyKind.DELTA) < 1_999


async def test_a_cancellation_the_worker_missed_is_told_again_at_the_next_delta(harness: Harness) -> None:
    # The race: a Cancel that reaches the worker before the item it names (still on its way in
    # the Generate call) cancels nothing there. Here the request is marked cancelled in the
    # batcher without the worker being told at all: the next delta must make the batcher tell it,
    # and the request must end as cancelled long before its 2,000 tokens.
    request = harness.request(stream=True, params=GenerationParams(max_new_tokens=2_000))
    await harness.send(request)
    first = ReplyEvent.from_bytes((await asyncio.wait_for(harness.replies.getone(), 20)).value)
    assert first.request_id == request.id and first.kind is ReplyKind.DELTA
    harness.batcher.states[request.id].cancelled = "missed by the worker"
    events = await harness.events_until_terminal(request.id, timeout=10)
    assert events[-1].kind is ReplyKind.ERROR and events[-1].error.code is ErrorCode.CANCELLED
    assert sum(1 for e in events if e.kind is ReplyKind.DELTA) <= 2  # at most what was in flight
    assert harness.batcher.states.get(request.id) is None or harness.batcher.states[request.id].cancel_resent


async def test_worker_dying_mid_stream_continues_on_another(harness: Harness) -> None:
    request = harness.request(stream=True, params=GenerationParams(max_new_tokens=60))
    await harness.send(request)
    first = ReplyEvent.from_bytes((await asyncio.wait_for(harness.replies.getone(), 20)).value)
    assert first.request_id == request.id
    victim = next(w for w in harness.workers if w.settings.instance_id == first.worker_id)
    # Abrupt: the gRPC server goes away without draining, as with kill -9.
    await victim._server.stop(grace=0)  # noqa: SLF001 - the test's fault injection
    events = [first] + await harness.events_until_terminal(request.id, timeout=30)
    final = events[-1]
    assert final.kind is ReplyKind.FINAL, final
    deltas = [e for e in events if e.kind is ReplyKind.DELTA]
    assert final.text == "".join(e.text for e in deltas)  # one coherent stream
    assert final.usage.completion_tokens == 60
    assert final.worker_id != victim.settings.instance_id
    assert [e.seq for e in events] == list(range(len(events)))


async def test_a_final_waiting_for_the_broker_does_not_hold_up_its_batch(cluster_settings) -> None:
    # One worker and a long wait for batches to fill, so the requests share one Generate stream.
    async with start_harness(cluster_settings, [WorkerSpec(capacity=8)], batcher_max_wait_ms=500) as harness:
        publisher = harness.batcher.publisher
        real_final = publisher.final
        entered: list[str] = []
        another_entered = asyncio.Event()
        overlapped: list[bool] = []

        async def slow_final(state, reason, **kw) -> None:
            entered.append(state.id)
            if len(entered) == 1:
                # The broker is slow to acknowledge the first final of the stream: the others
                # must not wait for it (they did when finals were awaited one after another).
                try:
                    await asyncio.wait_for(another_entered.wait(), 3)
                    overlapped.append(True)
                except TimeoutError:
                    overlapped.append(False)
            else:
                another_entered.set()
            await real_final(state, reason, **kw)

        publisher.final = slow_final  # type: ignore[method-assign]
        requests = [harness.request(params=GenerationParams(max_new_tokens=4)) for _ in range(4)]
        await asyncio.gather(*(harness.send(r) for r in requests))
        finals = await harness.terminals({r.id for r in requests})
        assert all(e.kind is ReplyKind.FINAL for e in finals.values())
        assert len({e.worker_id for e in finals.values()}) == 1
        assert overlapped == [True]


def _count_calls(harness: Harness) -> dict[str, int]:
    """Counts the Generate and GenerateBatched calls the batcher makes (on the workers it has)."""
    calls = {"Generate": 0, "GenerateBatched": 0}
    for handle in harness.batcher.pool.workers:
        for name in calls:
            real = getattr(handle.stub, name)

            def counting(*args, _real=real, _name=name, **kwargs):
                calls[_name] += 1
                return _real(*args, **kwargs)

            setattr(handle.stub, name, counting)
    return calls


async def test_workers_get_several_events_per_message(harness: Harness) -> None:
    calls = _count_calls(harness)
    assert all(w.info.batched_events for w in harness.batcher.pool.workers)
    requests = [harness.request(stream=True) for _ in range(3)]
    await asyncio.gather(*(harness.send(r) for r in requests))
    finals = await harness.terminals({r.id for r in requests})
    assert all(e.kind is ReplyKind.FINAL and e.usage.completion_tokens == 8 for e in finals.values())
    assert calls["GenerateBatched"] >= 1 and calls["Generate"] == 0


async def test_a_worker_of_an_earlier_version_is_called_with_generate(
    cluster_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_info = WorkerService.worker_info
    # An earlier worker's registry entry has no `batched_events` (the field's default).
    monkeypatch.setattr(
        WorkerService, "worker_info", lambda self: real_info(self).model_copy(update={"batched_events": False})
    )
    async with start_harness(cluster_settings) as harness:
        calls = _count_calls(harness)
        assert harness.batcher.pool.workers and not any(w.info.batched_events for w in harness.batcher.pool.workers)
        request = harness.request(stream=True)
        await harness.send(request)
        events = await harness.events_until_terminal(request.id)
        assert events[-1].kind is ReplyKind.FINAL and events[-1].usage.completion_tokens == 8
        assert events[-1].text == "".join(e.text for e in events[:-1])
        assert calls == {"Generate": 1, "GenerateBatched": 0}


async def _until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)  # test-side wait for the batcher's own tasks


async def test_cancellations_are_fetched_slowly_while_no_request_is_held(harness: Harness) -> None:
    settings, batcher = harness.settings, harness.batcher
    wait = batcher._cancel_wait  # noqa: SLF001 - the cancellation consumer's fetch wait
    assert wait is not None
    deep, held = settings.kafka_deep_idle_fetch_max_wait_ms, settings.kafka_idle_fetch_max_wait_ms
    await _until(lambda: wait.current_ms == deep)  # idle: about one fetch a second

    # A cancellation that comes while the batcher is idle is still read (within the long wait)
    # and remembered, so its request is cancelled when it is taken.
    early = harness.request(stream=True, params=GenerationParams(max_new_tokens=2_000))
    await harness.producer.send_and_wait(
        harness.topics.cancellations, Cancel(request_id=early.id, reason="early").to_bytes(), key=early.id
    )
    await _until(lambda: early.id in batcher._cancelled)  # noqa: SLF001
    await harness.send(early)
    events = await harness.events_until_terminal(early.id, timeout=20)
    assert events[-1].kind is ReplyKind.ERROR and events[-1].error.code is ErrorCode.CANCELLED

    running = harness.request(stream=True, params=GenerationParams(max_new_tokens=2_000))
    await harness.send(running)
    first = ReplyEvent.from_bytes((await asyncio.wait_for(harness.replies.getone(), 20)).value)
    assert first.request_id == running.id
    assert wait.current_ms == held  # a request is held: cancellations are fetched quickly
    await harness.producer.send_and_wait(
        harness.topics.cancellations, Cancel(request_id=running.id, reason="test").to_bytes(), key=running.id
    )
    events = await harness.events_until_terminal(running.id, timeout=10)
    assert events[-1].kind is ReplyKind.ERROR and events[-1].error.code is ErrorCode.CANCELLED
    await _until(lambda: wait.current_ms == deep)  # nothing held again


async def test_without_the_doorbell_nothing_is_parked(cluster_settings) -> None:
    async with start_harness(cluster_settings, kafka_doorbell=False) as harness:
        batcher = harness.batcher
        assert batcher.parking is None and batcher.doorbell is None and batcher.ringer is None
        request = harness.request()
        await harness.send(request)
        events = await harness.events_until_terminal(request.id, timeout=10)
        assert events[-1].kind is ReplyKind.FINAL and batcher.parked == frozenset()


async def test_the_doorbell_parks_caught_up_partitions_and_a_ring_resumes_them(harness: Harness) -> None:
    batcher = harness.batcher
    assert batcher.parking is not None and batcher.doorbell is not None  # on by default
    # Once every request partition has been fetched and nothing was announced, none is fetched.
    await _until(lambda: batcher.consumer.assignment() and batcher.parked == batcher.consumer.assignment())
    assert batcher.consumer.paused() >= batcher.parked
    for _ in range(3):
        request = harness.request()
        await harness.send(request, ring=True)
        events = await harness.events_until_terminal(request.id, timeout=10)
        assert events[-1].kind is ReplyKind.FINAL
    assert batcher.parking.unannounced == 0
    assert batcher.doorbell.rings >= 3
    await _until(lambda: batcher.parked == batcher.consumer.assignment())  # parked again

    # A request nobody announced (an upstream producer that does not ring) is found by the
    # safety fetch, and parking stops for `kafka_idle_after_s`: such traffic is fetched as before.
    quiet = harness.request()
    await harness.send(quiet)
    events = await harness.events_until_terminal(quiet.id, timeout=10)
    assert events[-1].kind is ReplyKind.FINAL
    await _until(lambda: batcher.parking.unannounced == 1)  # judged once no ring came within grace_s
    assert not batcher.parking.active()
    await _until(lambda: batcher.parked == frozenset())


async def test_stop_returns_and_closes_everything_when_the_broker_is_gone(cluster_settings) -> None:
    """A finished request's offset is not committed yet and the broker goes away: stop() must
    still return, within about `kafka_request_timeout_ms`, without raising, and close its other
    clients (aiokafka retries the commit forever while the broker is unreachable)."""
    broker = start_tansu("127.0.0.1", find_free_port())  # its own: this test stops it
    worker = WorkerService(worker_settings(cluster_settings, "sim-0", WorkerSpec()))
    service = None
    try:
        fields = dict(
            instance_id="batcher-test",
            kafka_bootstrap=broker.address,
            kafka_request_timeout_ms=2_000,
            batcher_group_id=f"{cluster_settings.topic_prefix}-batcher",
            batcher_metrics_port=find_free_port(),
            metrics_interval_s=60,
        )
        settings = BatcherSettings(**cluster_settings.model_dump(exclude=set(fields)), **fields)
        await worker.start()
        service = BatcherService(settings)
        await service.start()
        # Hold the commit loop back, so the finished request stays uncommitted until stop().
        commit = next(t for t in service._background if t.get_name() == "commit")  # noqa: SLF001
        commit.cancel()
        producer = make_producer(settings, client_id="test")
        await producer.start()
        try:
            request = GenerationRequest(
                id="r-broker-gone", model="simulated", prompt="hello",
                params=GenerationParams(max_new_tokens=4), reply_to=f"{settings.topic_prefix}.replies.test",
            )
            await producer.send_and_wait(service.topics.requests(Priority.NORMAL), request.to_bytes(), key=request.id)
        finally:
            await producer.stop()
        await _until(lambda: service.tracker.commit_offsets(), timeout=20)  # finished, not committed
        # The worker's Kafka client (its metrics snapshots) goes first: every one left is the batcher's.
        await worker.stop()
        worker = None
        broker.stop(grace_s=0.5)  # gone for good, as after a crash

        started = time.monotonic()
        await asyncio.wait_for(service.stop(), timeout=settings.kafka_request_timeout_ms / 1000 + 10)
        assert time.monotonic() - started < settings.kafka_request_timeout_ms / 1000 + 5
        # Every closer ran: its Kafka clients left no task behind, its ops server no longer accepts
        # connections, its Redis connections are closed.
        assert not [t for t in asyncio.all_tasks() if "/aiokafka/" in t.get_coro().cr_code.co_filename]
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection(settings.batcher_host, settings.batcher_metrics_port)
            writer.close()
        pool = service.redis.connection_pool
        connections = [*pool._available_connections, *pool._in_use_connections]  # noqa: SLF001
        assert connections and not any(c.is_connected for c in connections)
        service = None
    finally:
        try:
            if service is not None:  # failed above: close what is left
                await asyncio.wait_for(service.stop(), 15)
        finally:
            if worker is not None:
                await worker.stop()
            broker.stop(grace_s=3)
