"""Crash tests of the batcher's delivery guarantees with real OS processes, the real Tansu broker
and Redis, and simulated workers:

- kill -9 of one of two batcher processes sharing the consumer group: every request still ends
  exactly once as the client sees it (duplicates dropped by (request id, seq), as the gateway's
  reply router does);
- kill -9 of a worker process mid-stream: every request ends with its full result (continued on
  the other worker) or an explicit error.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.batcher.service import BatcherService
from services.batcher.settings import BatcherSettings
from services.worker.service import WorkerService
from shared.kafka_clients import make_consumer, make_producer
from shared.launcher.infra import find_free_port
from shared.records import GenerationParams, GenerationRequest, Priority, ReplyEvent, ReplyKind
from shared.settings import ClusterSettings
from shared.topics import Topics, TopicSpec, ensure_topics
from tests.services.batcher.harness import WorkerSpec, worker_settings

REPO = Path(__file__).resolve().parents[2]


def _env(settings: ClusterSettings, **extra: object) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LGC_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        LGC_REDIS_URL=settings.redis_url,
        LGC_TOPIC_PREFIX=settings.topic_prefix,
        LGC_REQUEST_TOPIC_PARTITIONS=str(settings.request_topic_partitions),
        LGC_TOPIC_PARTITIONS=str(settings.topic_partitions),
        LGC_KAFKA_SESSION_TIMEOUT_MS="2000",
        LGC_STATE_DIR=str(settings.state_dir),
        LGC_LOG_FORMAT="text",
        LGC_METRICS_INTERVAL_S="60",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextmanager
def _process(module: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # the test is over: no grace needed, and a hung child must not outlive it
        proc.wait(timeout=10)


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # Safe: not listening yet; asked again below
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never became ready:\n{log.read_text()[-3000:]}")


async def _metric(url: str, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(url, timeout=5)).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@asynccontextmanager
async def _clients(settings: ClusterSettings, reply_topic: str) -> AsyncIterator[tuple]:
    topics = Topics.from_settings(settings)
    await ensure_topics(settings, topics.cluster_topics(settings) + [TopicSpec(reply_topic, 1, 1)])
    producer = make_producer(settings, client_id="test")
    replies = make_consumer(settings, reply_topic, client_id="test-replies", group_id=None)
    await producer.start()
    await replies.start()
    try:
        yield topics, producer, replies
    finally:
        await replies.stop()
        await producer.stop()


async def _collect(replies, ids: set[str], timeout: float) -> dict[str, list[ReplyEvent]]:
    """Every event of `ids`, duplicates by (request id, seq) dropped, until each has a terminal."""
    seen: set[tuple[str, int]] = set()
    events: dict[str, list[ReplyEvent]] = {i: [] for i in ids}
    ended: set[str] = set()
    deadline = time.monotonic() + timeout
    while ended != ids:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{len(ids - ended)} requests never ended: {sorted(ids - ended)[:5]}"
        batch = await replies.getmany(timeout_ms=int(min(remaining, 1) * 1000))
        for records in batch.values():
            for record in records:
                event = ReplyEvent.from_bytes(record.value)
                if event.request_id not in ids or (event.request_id, event.seq) in seen:
                    continue
                seen.add((event.request_id, event.seq))
                events[event.request_id].append(event)
                if event.terminal:
                    ended.add(event.request_id)
    return events


async def test_kill_9_of_a_batcher_loses_no_request(cluster_settings: ClusterSettings, tmp_path: Path) -> None:
    settings = cluster_settings.model_copy(update={"request_topic_partitions": 4})
    reply_topic = f"{settings.topic_prefix}.replies.test"
    worker = WorkerService(worker_settings(settings, "sim-0", WorkerSpec(capacity=4, tokens_per_s=50, ttft_ms=5)))
    await worker.start()
    group = f"{settings.topic_prefix}-batchers"
    ports = [find_free_port(), find_free_port()]
    logs = [tmp_path / "batcher-a.log", tmp_path / "batcher-b.log"]
    envs = [
        _env(settings, LGC_INSTANCE_ID=f"batcher-{n}", LGC_BATCHER_METRICS_PORT=port, LGC_BATCHER_GROUP_ID=group)
        for n, port in zip("ab", ports, strict=True)
    ]
    try:
        async with _clients(settings, reply_topic) as (topics, producer, replies):
            with _process("services.batcher", envs[0], logs[0]) as victim, _process("services.batcher", envs[1], logs[1]) as survivor:
                for port, proc, log in zip(ports, (victim, survivor), logs, strict=True):
                    await _wait_ready(f"http://127.0.0.1:{port}/ready", proc, log)
                await asyncio.sleep(3)  # both joined: the group settles into 2 members
                requests = [
                    GenerationRequest(
                        id=f"r-{uuid.uuid4().hex[:12]}", model="simulated", prompt="hello",
                        params=GenerationParams(max_new_tokens=10), reply_to=reply_topic, stream=i % 2 == 0,
                    )
                    for i in range(60)
                ]
                await asyncio.gather(
                    *(producer.send_and_wait(topics.requests(Priority.NORMAL), r.to_bytes(), key=r.id) for r in requests)
                )
                victim_metrics = f"http://127.0.0.1:{ports[0]}/metrics"
                deadline = time.monotonic() + 20
                while await _metric(victim_metrics, "lgc_batcher_inflight_requests") == 0:
                    assert time.monotonic() < deadline, "the victim never took a request"
                    await asyncio.sleep(0.05)
                os.kill(victim.pid, signal.SIGKILL)  # mid-way: it holds requests in flight
                victim.wait(timeout=10)
                events = await _collect(replies, {r.id for r in requests}, timeout=90)
                assert survivor.poll() is None
        for request in requests:
            mine = events[request.id]
            terminals = [e for e in mine if e.terminal]
            assert len(terminals) == 1, (request.id, mine)
            assert terminals[0].kind is ReplyKind.FINAL, terminals[0]
            assert terminals[0].usage.completion_tokens == 10
    finally:
        await worker.stop()


@dataclass
class _VictimScenario:
    """Eight streaming requests of 100 tokens, some of them running on the victim worker process."""

    batcher: BatcherService
    victim: subprocess.Popen[bytes]
    requests: list[GenerationRequest]
    replies: object


@asynccontextmanager
async def _streams_on_a_victim_worker(
    settings: ClusterSettings, tmp_path: Path, *, deadline_s: float | None = None, **batcher_extra: object
) -> AsyncIterator[_VictimScenario]:
    """Two simulated workers (a survivor in this process, a victim as a real worker process), one
    round-robin batcher, and the requests sent one by one so that half go to each worker; yields
    once the victim has streamed a few tokens, for the test to strike it."""
    reply_topic = f"{settings.topic_prefix}.replies.test"
    survivor = WorkerService(worker_settings(settings, "sim-survivor", WorkerSpec(capacity=8, tokens_per_s=100)))
    await survivor.start()
    victim_port = find_free_port()
    log = tmp_path / "worker.log"
    env = _env(
        settings, LGC_INSTANCE_ID="sim-victim", LGC_WORKER_BACKEND="simulated", LGC_WORKER_GRPC_PORT=find_free_port(),
        LGC_WORKER_METRICS_PORT=victim_port, LGC_SIMULATED_TOKENS_PER_S=100, LGC_SIMULATED_TTFT_MS=5,
        LGC_WORKER_MAX_BATCH_SIZE=8,
    )
    batcher_settings = BatcherSettings(
        **settings.model_dump(exclude={"instance_id", "metrics_interval_s"}),
        instance_id="batcher-test", batcher_group_id=f"{settings.topic_prefix}-batcher",
        batcher_metrics_port=find_free_port(), metrics_interval_s=60, batcher_lb_policy="round_robin",
        **batcher_extra,
    )
    batcher = BatcherService(batcher_settings)
    try:
        async with _clients(settings, reply_topic) as (topics, producer, replies):
            with _process("services.worker", env, log) as victim:
                await _wait_ready(f"http://127.0.0.1:{victim_port}/ready", victim, log)
                await batcher.start()
                deadline = time.monotonic() + 20
                while len(batcher.pool) < 2:  # both workers registered
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
                requests = [
                    GenerationRequest(
                        id=f"r-{uuid.uuid4().hex[:12]}", model="simulated", prompt="hello",
                        params=GenerationParams(max_new_tokens=100), reply_to=reply_topic, stream=True,
                        deadline=None if deadline_s is None else time.time() + deadline_s,
                    )
                    for _ in range(8)
                ]
                for r in requests:  # one by one: round robin puts half on each worker
                    await producer.send_and_wait(topics.requests(Priority.NORMAL), r.to_bytes(), key=r.id)
                    await asyncio.sleep(0.05)
                deadline = time.monotonic() + 20
                while not any(s.worker_id == "sim-victim" and s.tokens > 5 for s in batcher.states.values()):
                    assert time.monotonic() < deadline, "nothing ran on the victim"
                    await asyncio.sleep(0.02)
                yield _VictimScenario(batcher, victim, requests, replies)
    finally:
        await batcher.stop()
        await survivor.stop()


async def test_kill_9_of_a_worker_process_mid_stream(cluster_settings: ClusterSettings, tmp_path: Path) -> None:
    async with _streams_on_a_victim_worker(cluster_settings, tmp_path) as scenario:
        os.kill(scenario.victim.pid, signal.SIGKILL)
        events = await _collect(scenario.replies, {r.id for r in scenario.requests}, timeout=60)
    assert scenario.batcher.metrics.retries._value.get() >= 1  # noqa: SLF001 - the kill hit live streams
    for request in scenario.requests:
        mine = events[request.id]
        final = mine[-1]
        assert sum(1 for e in mine if e.terminal) == 1
        if final.kind is ReplyKind.FINAL:
            assert final.usage.completion_tokens == 100
            assert final.text == "".join(e.text for e in mine if e.kind is ReplyKind.DELTA)  # coherent
            assert [e.seq for e in mine] == list(range(len(mine)))
        else:  # an explicit error is allowed, a silent end is not
            assert final.kind is ReplyKind.ERROR and final.error.code is not None


async def test_a_hung_worker_process_is_noticed_and_its_streams_continue_elsewhere(
    cluster_settings: ClusterSettings, tmp_path: Path
) -> None:
    """SIGSTOP of a real worker process mid-stream (it hangs without dying: port open, no answers):
    the batcher's stall check notices the silent stream long before the requests' deadline, and
    every request ends with its full, coherent text from the other worker."""
    async with _streams_on_a_victim_worker(
        cluster_settings, tmp_path, deadline_s=60, batcher_stream_stall_s=1.0, batcher_stall_probe_timeout_s=1.0
    ) as scenario:
        os.kill(scenario.victim.pid, signal.SIGSTOP)
        try:
            # Far below the 60 s deadline: without the stall check they would wait for it.
            events = await _collect(scenario.replies, {r.id for r in scenario.requests}, timeout=30)
        finally:
            os.kill(scenario.victim.pid, signal.SIGCONT)  # so that it can be killed and reaped
    assert scenario.batcher.metrics.worker_stalls.labels("sim-victim")._value.get() >= 1  # noqa: SLF001
    for request in scenario.requests:
        mine = events[request.id]
        final = mine[-1]
        assert sum(1 for e in mine if e.terminal) == 1
        assert final.kind is ReplyKind.FINAL, final
        assert final.usage.completion_tokens == 100
        assert final.text == "".join(e.text for e in mine if e.kind is ReplyKind.DELTA)
        assert final.text == " ".join(f"tok{i}" for i in range(100))
