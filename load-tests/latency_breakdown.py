"""Where one request's time goes at low load: Kafka in -> reply out, one request at a time.

Starts an embedded cluster with zero-compute simulated workers (as `pipeline_bench.py`'s direct
phase), produces GenerationRequests one after another onto `lgc.requests.normal` with a reply
topic of its own, and splits each request's time with the clocks the records carry (every
service runs on this machine, so their wall clocks agree):

* `produce_ack`: this script's send until the broker acknowledged it;
* `request_hop`: acknowledgement -> the batcher dispatched it (the broker's next read of the
  batcher's waiting fetch, the fetch's answer, admission, batching);
* `worker_grpc`: dispatch -> the batcher built the result (the gRPC stream of 4 tokens);
  `first_token` is the part until the first token;
* `reply_hop`: the final ReplyEvent was made -> this script read it (its produce and
  acknowledgement, then the broker's next read of this script's waiting fetch).

The timings come from the GenerationResult on `lgc.results` (`Timings`), read by a consumer with
a long fetch wait so that it adds little load. Settings pass through the environment (`LGC_*`),
e.g. `LGC_KAFKA_FETCH_MAX_WAIT_MS=10`. Prints one JSON object (milliseconds). Not a test.

Usage:

    .venv/bin/python load-tests/latency_breakdown.py
    LGC_REQUEST_TOPIC_PARTITIONS=6 .venv/bin/python load-tests/latency_breakdown.py --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "load-tests"))

from pipeline_bench import _cluster  # noqa: E402 - after the repository is on the path

from shared import event_loop  # noqa: E402
from shared.kafka_clients import make_consumer, make_producer  # noqa: E402
from shared.records import GenerationParams, GenerationRequest, GenerationResult, Priority, ReplyEvent  # noqa: E402
from shared.topics import Topics, TopicSpec, ensure_topics  # noqa: E402

_SEGMENTS = ("total", "produce_ack", "request_hop", "worker_grpc", "first_token", "reply_hop")


async def _run(args: argparse.Namespace) -> dict:
    env = {
        "LGC_SIMULATED_TOKENS_PER_S": "1000000",
        "LGC_SIMULATED_TTFT_MS": "0",
        "LGC_WORKER_MAX_BATCH_SIZE": "512",
    }
    log = Path(tempfile.gettempdir()) / "latency-breakdown.log"
    with _cluster(None, args.workers, env, log, want_settings=True) as (_url, _pids, settings):
        topics = Topics.from_settings(settings)
        reply_topic = f"{settings.topic_prefix}.replies.breakdown"
        await ensure_topics(settings, [TopicSpec(reply_topic, 1, 1)])
        producer = make_producer(settings, client_id="breakdown")
        replies = make_consumer(settings, reply_topic, client_id="breakdown-replies", group_id=None)
        # Off the measured path: a long wait keeps its fetches (and their CPU) rare.
        results = make_consumer(
            settings.model_copy(update={"kafka_fetch_max_wait_ms": 200}), topics.results,
            client_id="breakdown-results", group_id=None, auto_offset_reset="latest",
        )
        for client in (producer, replies, results):
            await client.start()
        pending: dict[str, asyncio.Future[tuple[float, ReplyEvent]]] = {}
        timings: dict[str, GenerationResult] = {}

        async def read_replies() -> None:
            while True:
                for records in (await replies.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = ReplyEvent.from_bytes(record.value)
                        future = pending.pop(event.request_id, None) if event.terminal else None
                        if future is not None and not future.done():
                            future.set_result((time.time(), event))

        async def read_results() -> None:
            while True:
                for records in (await results.getmany(timeout_ms=500)).values():
                    for record in records:
                        result = GenerationResult.from_bytes(record.value)
                        timings[result.request_id] = result

        readers = [asyncio.create_task(read_replies()), asyncio.create_task(read_results())]
        try:
            await asyncio.sleep(1.0)  # both readers' positions are set
            rows = []
            for n in range(args.warmup + args.requests):
                request = GenerationRequest(
                    id=f"bd{n}-{time.monotonic_ns()}", model="simulated", prompt=f"breakdown {n}",
                    params=GenerationParams(max_new_tokens=args.max_tokens, temperature=0.7), reply_to=reply_topic,
                )
                future = asyncio.get_running_loop().create_future()
                pending[request.id] = future
                sent = time.time()
                await producer.send_and_wait(topics.requests(Priority.NORMAL), request.to_bytes(), key=request.id)
                acked = time.time()
                read_at, event = await asyncio.wait_for(future, 30)
                if n >= args.warmup:
                    rows.append((request, sent, acked, read_at, event))
            await asyncio.sleep(1.0)  # the last results arrive
        finally:
            for reader in readers:
                reader.cancel()
            for client in (replies, results, producer):
                await client.stop()
    segments: dict[str, list[float]] = {name: [] for name in _SEGMENTS}
    for request, sent, acked, read_at, event in rows:
        result = timings.get(request.id)
        if result is None or result.timings.queue_ms is None or result.timings.total_ms is None:
            continue
        dispatched = request.created_at + result.timings.queue_ms / 1000
        built = request.created_at + result.timings.total_ms / 1000
        segments["total"].append(read_at - sent)
        segments["produce_ack"].append(acked - sent)
        segments["request_hop"].append(dispatched - acked)
        segments["worker_grpc"].append(built - dispatched)
        segments["first_token"].append((result.timings.ttft_ms or 0.0) / 1000)
        segments["reply_hop"].append(read_at - event.created_at)
    out = {"requests": len(segments["total"]), "max_tokens": args.max_tokens}
    for name, values in segments.items():
        if values:
            deciles = statistics.quantiles(values, n=10, method="inclusive")
            out[name] = {"p50": round(deciles[4] * 1000, 2), "p90": round(deciles[8] * 1000, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(event_loop.run(_run(args), loop="uvloop"), indent=2))


if __name__ == "__main__":
    main()
