"""Does the embedded Tansu broker end a waiting fetch when data arrives? Produce -> consume latency.

Starts Tansu (memory storage, as `lgc up` does), one producer (linger 0, as the services) and one
consumer with a long `fetch_max_wait_ms`, then produces one record at a time and times how long
the consumer takes to see it. If the broker woke waiting fetches on new data, every record would
arrive in a few milliseconds whatever the wait; if it did not, a record would wait for the rest
of the fetch wait (half of it on average). Three patterns per wait:

* `spaced`: records 50 ms apart (the consumer's next fetch is already waiting when a record comes);
* `back_to_back`: the next record is produced as soon as the last one was read (its fetch may be
  sent while the record is on its way);
* `irregular`: gaps of 0, 37, 74, 111 and 148 ms in turn, as requests arrive.

Prints one JSON object: per partition count, wait and pattern, the latency percentiles and how
many records took longer than a third of the wait (`missed_wakeups`). Not a test: numbers depend
on the machine. Why it matters: services/batcher/README.md ("Where the time goes") and
shared/kafka_clients.py (`AdaptiveFetchWait`).

Usage:

    .venv/bin/python load-tests/fetch_wakeup.py
    .venv/bin/python load-tests/fetch_wakeup.py --records 50 --waits 500,100
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

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402 - after the repository is on the path
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from shared.launcher.infra import find_free_port, start_tansu  # noqa: E402


_GAPS_S = {"spaced": lambda n: 0.05, "back_to_back": lambda n: 0.0, "irregular": lambda n: 0.037 * (n % 5)}


async def _measure(bootstrap: str, topic: str, wait_ms: int, records: int, pattern: str) -> dict:
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
            await asyncio.sleep(_GAPS_S[pattern](n))
            start = time.perf_counter()
            await producer.send_and_wait(topic, b"x", key=str(n).encode())
            await consumer.getone()
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        await consumer.stop()
        await producer.stop()
    cuts = statistics.quantiles(latencies, n=10, method="inclusive")  # deciles
    return {
        "p50_ms": round(cuts[4], 2),
        "p90_ms": round(cuts[8], 2),
        "max_ms": round(max(latencies), 2),
        "missed_wakeups": sum(1 for x in latencies if x > wait_ms / 3),
        "records": records,
    }


async def _run(args: argparse.Namespace) -> dict:
    port = find_free_port()
    broker = start_tansu("127.0.0.1", port)
    bootstrap = f"127.0.0.1:{port}"
    out: dict = {"broker": "tansu (memory storage)", "results": []}
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(f"wake-{p}", p, 1) for p in args.partitions])
        await admin.close()
        for partitions in args.partitions:
            for wait_ms in args.waits:
                for pattern in _GAPS_S:
                    result = await _measure(bootstrap, f"wake-{partitions}", wait_ms, args.records, pattern)
                    row = {"partitions": partitions, "fetch_max_wait_ms": wait_ms, "pattern": pattern, **result}
                    out["results"].append(row)
                    print(json.dumps({"progress": row}), file=sys.stderr, flush=True)
    finally:
        broker.stop(grace_s=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", default="1,12", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--waits", default="500", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--records", type=int, default=30)
    print(json.dumps(asyncio.run(_run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
