"""When does the embedded Tansu broker answer a waiting fetch, and what does waiting cost?

Tansu 0.6 (memory storage, as `lgc up` runs it) does not wake a waiting fetch when data arrives:
it re-reads its storage on a schedule (load-tests/README.md, "Tansu's fetch schedule"). This
measures that schedule and its consequences in three parts:

* `schedule`: raw Fetch requests (one partition, `min_bytes` 1) with a wait W. First with no data
  (how long an empty fetch takes), then with one record produced d ms after the fetch was sent,
  for d at several fractions of W: when the fetch answers, and how long after the record's
  acknowledgement. A broker that woke on data would answer about 1 ms after every produce.
* `consumer`: produce -> consume latency through an ordinary consumer (aiokafka, as the services
  use it: already waiting for records when one is produced) with records 50 ms apart (`spaced`),
  back to back, and with irregular gaps of 0, 37, 74, 111 and 148 ms; `over_third_of_wait`
  counts the records that took longer than W / 3. aiokafka sends a fetch only while the caller
  waits for records; a consumer asked only after the produce finds the record at the broker's
  first read (an earlier version of this script measured that, and read it as a wake-up).
* `idle_cpu`: the CPU one idle consumer costs itself and the broker, per wait and partition count
  (every fetch is a request the broker answers and the client builds and parses).

Prints one JSON object. Not a test: the numbers depend on the machine. Why it matters:
shared/kafka_clients.py (`AdaptiveFetchWait`), services/batcher/README.md ("Where the time goes").

Usage:

    .venv/bin/python load-tests/tansu_fetch_schedule.py
    .venv/bin/python load-tests/tansu_fetch_schedule.py --waits 100,10 --records 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402 - after the repository is on the path
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.protocol.fetch import FetchRequest  # noqa: E402

from shared.launcher.infra import find_free_port, start_tansu  # noqa: E402

#: When, as a fraction of the wait, the record is produced after the fetch was sent.
_PRODUCE_AT = (0.05, 0.3, 0.55, 0.7, 0.8, 0.9, 0.95)

_GAPS_S = {"spaced": lambda n: 0.05, "back_to_back": lambda n: 0.0, "irregular": lambda n: 0.037 * (n % 5)}


def _has_records(response: object) -> bool:
    """Whether a FetchResponse carries any record bytes."""
    for _topic, partitions in response.topics:  # type: ignore[attr-defined]
        for partition in partitions:
            if any(isinstance(field, bytes) and field for field in partition):
                return True
    return False


async def _schedule(bootstrap: str, topic: str, wait_ms: int) -> dict:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await producer.start()
    await client.bootstrap()
    try:
        meta = await producer.send_and_wait(topic, b"first", partition=0)
        next_offset = meta.offset + 1
        node = next(iter(client.cluster.brokers())).nodeId

        def fetch() -> FetchRequest:
            return FetchRequest(wait_ms, 1, 1_000_000, 0, [(topic, [(0, next_offset, 1_000_000)])])

        started = time.perf_counter()
        await client.send(node, fetch())
        empty_ms = (time.perf_counter() - started) * 1000
        rows = []
        for fraction in _PRODUCE_AT:
            started = time.perf_counter()
            answer = asyncio.ensure_future(client.send(node, fetch()))
            await asyncio.sleep(fraction * wait_ms / 1000)
            await producer.send_and_wait(topic, b"x", partition=0)
            acked = time.perf_counter()
            response = await answer
            answered = time.perf_counter()
            if _has_records(response):
                next_offset += 1
            else:  # answered before the record was stored: read it so the next fetch waits again
                await client.send(node, FetchRequest(0, 1, 1_000_000, 0, [(topic, [(0, next_offset, 1_000_000)])]))
                next_offset += 1
            rows.append({
                "produced_at_ms": round(fraction * wait_ms, 1),
                "answered_at_ms": round((answered - started) * 1000, 1),
                "after_ack_ms": round((answered - acked) * 1000, 1),
                "carried_the_record": _has_records(response),
            })
        return {"fetch_max_wait_ms": wait_ms, "empty_fetch_ms": round(empty_ms, 1), "with_a_record": rows}
    finally:
        await client.close()
        await producer.stop()


async def _consumer(bootstrap: str, topic: str, wait_ms: int, records: int, pattern: str) -> dict:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms, auto_offset_reset="latest", group_id=None
    )
    await producer.start()
    await consumer.start()
    try:
        await asyncio.sleep(1.0)  # the consumer's position is set and its first fetch waits
        latencies = []
        for n in range(records):
            # Wait first, then produce, as a service's consumer loop does: aiokafka sends its next
            # fetch only once the caller asks for records, so a getone() called after the produce
            # would find the record at the broker's first read and hide the schedule.
            waiting = asyncio.ensure_future(consumer.getone())
            await asyncio.sleep(_GAPS_S[pattern](n))
            start = time.perf_counter()
            await producer.send_and_wait(topic, b"x", key=str(n).encode())
            await waiting
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        await consumer.stop()
        await producer.stop()
    cuts = statistics.quantiles(latencies, n=10, method="inclusive")  # deciles
    return {
        "p50_ms": round(cuts[4], 2),
        "p90_ms": round(cuts[8], 2),
        "max_ms": round(max(latencies), 2),
        "over_third_of_wait": sum(1 for x in latencies if x > wait_ms / 3),
        "records": records,
    }


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def _idle_cpu(bootstrap: str, broker: psutil.Process, topics: list[str], wait_ms: int, seconds: float) -> dict:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms, group_id=None)
    await consumer.start()
    me = psutil.Process()
    try:
        await asyncio.sleep(1.0)
        client0, broker0, began = _cpu_s(me), _cpu_s(broker), time.perf_counter()
        while time.perf_counter() - began < seconds:
            await consumer.getmany(timeout_ms=1_000)
        wall = time.perf_counter() - began
        return {
            "broker_core_pct": round(100 * (_cpu_s(broker) - broker0) / wall, 1),
            "client_core_pct": round(100 * (_cpu_s(me) - client0) / wall, 1),
        }
    finally:
        await consumer.stop()


async def _run(args: argparse.Namespace) -> dict:
    port = find_free_port()
    broker = start_tansu("127.0.0.1", port)
    bootstrap = f"127.0.0.1:{port}"
    out: dict = {"broker": "tansu (memory storage)", "schedule": [], "consumer": [], "idle_cpu": []}
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics(
            [NewTopic("schedule", 1, 1)]
            + [NewTopic(f"latency-{p}", p, 1) for p in args.partitions]
            + [NewTopic(f"idle-{p}-{i}", p, 1) for p in args.partitions for i in range(3)]
        )
        await admin.close()
        for wait_ms in args.waits:
            row = await _schedule(bootstrap, "schedule", wait_ms)
            out["schedule"].append(row)
            print(json.dumps({"progress": row}), file=sys.stderr, flush=True)
        for partitions in args.partitions:
            for wait_ms in args.waits:
                for pattern in _GAPS_S:
                    result = await _consumer(bootstrap, f"latency-{partitions}", wait_ms, args.records, pattern)
                    row = {"partitions": partitions, "fetch_max_wait_ms": wait_ms, "pattern": pattern, **result}
                    out["consumer"].append(row)
                    print(json.dumps({"progress": row}), file=sys.stderr, flush=True)
        broker_process = psutil.Process(broker.pid)
        for partitions in args.partitions:
            for wait_ms in args.idle_waits:
                # Three topics, as the batcher reads its three priority levels.
                topics = [f"idle-{partitions}-{i}" for i in range(3)]
                result = await _idle_cpu(bootstrap, broker_process, topics, wait_ms, args.idle_seconds)
                row = {"partitions": 3 * partitions, "fetch_max_wait_ms": wait_ms, **result}
                out["idle_cpu"].append(row)
                print(json.dumps({"progress": row}), file=sys.stderr, flush=True)
    finally:
        broker.stop(grace_s=1)
    return out


def main() -> None:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", default="1,6", type=ints, help="per topic")
    parser.add_argument("--waits", default="100,5", type=ints, help="fetch_max_wait_ms for the schedule and latency parts")
    parser.add_argument("--idle-waits", default="5,20,100", type=ints, help="fetch_max_wait_ms for the idle CPU part")
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    print(json.dumps(asyncio.run(_run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
