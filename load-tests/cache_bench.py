"""Benchmark of the gateway's caches through the full HTTP path; prints JSON.

Measures, at the client (httpx, one request at a time, keep-alive):

* exact-hit latency p50/p99: distinct deterministic chat requests are sent once (misses), then
  repeated (`X-LGC-Cache: hit-exact`);
* semantic-hit latency p50/p99 and the paraphrase hit rate on load-tests/data/paraphrase_pairs.jsonl:
  question `a` is sent (miss, stored), then its paraphrase `b`; a hit is `hit-semantic`;
* the false-hit rate on load-tests/data/near_miss_pairs.jsonl: `a` then `b`; ANY hit is false.

Each pair gets its own scope (a system turn naming the pair), so pairs never answer each other.

By default it starts everything it needs on loopback: a Tansu broker and a redis-server (from their
wheels), one gateway as its own process (`python -m services.gateway`, semantic cache on, Qdrant
local mode in a temporary directory), a worker entry in Redis, and, in this process, a minimal
stand-in for the batcher that answers every request with a fixed text (cache misses need an answer
to store; their latency is not measured). Or point it at a
running cluster with --url (the cluster's own answers are cached then).

    .venv/bin/python load-tests/cache_bench.py [--exact 200] [--pairs 240] [--with-keys]
    .venv/bin/python load-tests/cache_bench.py --url http://127.0.0.1:8000 [--api-key KEY]

Bounded: at most --exact + 2 x (paraphrases + near misses) requests, each with a 60 s timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(__file__).resolve().parent / "data"
MODEL = "bench-model"


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[k] * 1000, 2)


def load(name: str, limit: int) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit]


def body(question: str, scope: str, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "system", "content": f"benchmark scope {scope}"}, {"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 16,
    }


async def ask(http: httpx.AsyncClient, payload: dict[str, Any]) -> tuple[str, float]:
    started = time.perf_counter()
    response = await http.post("/v1/chat/completions", json=payload)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return response.headers.get("x-lgc-cache", "?"), elapsed


async def settle(service: Any) -> None:
    """Wait for the gateway's background cache writes: drained in-process, else 50 ms (ample)."""
    if service is not None:
        await service.pipeline.drain()
    else:
        await asyncio.sleep(0.05)


async def run_bench(
    base_url: str, model: str, exact_n: int, pairs_n: int, service: Any, api_key: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers=headers) as http:
        # Warm-up: connection, model catalog, embedder.
        for i in range(5):
            await ask(http, body(f"warm up {i}", "warm", model))
            await settle(service)

        distinct = 50
        for i in range(distinct):
            await ask(http, body(f"Exact benchmark question number {i}?", "exact", model))
        await settle(service)
        exact_lat: list[float] = []
        exact_status: dict[str, int] = {}
        for i in range(exact_n):
            status, elapsed = await ask(http, body(f"Exact benchmark question number {i % distinct}?", "exact", model))
            exact_status[status] = exact_status.get(status, 0) + 1
            if status == "hit-exact":
                exact_lat.append(elapsed)

        paraphrases = load("paraphrase_pairs.jsonl", pairs_n)
        semantic_lat: list[float] = []
        para_status: dict[str, int] = {}
        missed: list[str] = []
        for row in paraphrases:
            await ask(http, body(row["a"], row["id"], model))
            await settle(service)
            status, elapsed = await ask(http, body(row["b"], row["id"], model))
            para_status[status] = para_status.get(status, 0) + 1
            if status == "hit-semantic":
                semantic_lat.append(elapsed)
            else:
                missed.append(f"{row['a']} | {row['b']}")

        near = load("near_miss_pairs.jsonl", pairs_n)
        false_hits: list[dict[str, str]] = []
        near_status: dict[str, int] = {}
        for row in near:
            await ask(http, body(row["a"], row["id"], model))
            await settle(service)
            status, _ = await ask(http, body(row["b"], row["id"], model))
            near_status[status] = near_status.get(status, 0) + 1
            if status.startswith("hit"):
                false_hits.append({"kind": row["kind"], "a": row["a"], "b": row["b"], "status": status})

    hits = para_status.get("hit-semantic", 0) + para_status.get("hit-exact", 0)
    return {
        "exact_hit": {
            "requests": exact_n,
            "statuses": exact_status,
            "p50_ms": pct(exact_lat, 50),
            "p99_ms": pct(exact_lat, 99),
            "mean_ms": round(statistics.fmean(exact_lat) * 1000, 2) if exact_lat else None,
            "target_p50_ms": 5,
        },
        "semantic_hit": {
            "hits": len(semantic_lat),
            "p50_ms": pct(semantic_lat, 50),
            "p99_ms": pct(semantic_lat, 99),
            "mean_ms": round(statistics.fmean(semantic_lat) * 1000, 2) if semantic_lat else None,
            "target_p50_ms": 30,
        },
        "paraphrase": {
            "pairs": len(paraphrases),
            "statuses": para_status,
            "hit_rate": round(hits / len(paraphrases), 4) if paraphrases else None,
            "target_hit_rate": 0.8,
            "missed_examples": missed[:10],
        },
        "near_miss": {
            "pairs": len(near),
            "statuses": near_status,
            "false_hits": len(false_hits),
            "false_hit_rate": round(len(false_hits) / len(near), 4) if near else None,
            "target_false_hits": 0,
            "false_hit_examples": false_hits[:10],
        },
    }


async def embedded(args: argparse.Namespace) -> dict[str, Any]:
    """Tansu + Redis + one in-process gateway + a stand-in batcher, all on loopback."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import redis.asyncio as aioredis

    from shared.kafka_clients import make_consumer, make_producer
    from shared.launcher.infra import find_free_port, start_redis, start_tansu
    from shared.records import FinishReason, GenerationRequest, ReplyEvent, ReplyKind, Usage
    from shared.topics import Topics, ensure_topics
    from shared.worker_registry import WorkerInfo, WorkerRegistry

    import subprocess

    from shared.launcher.infra import wait_for_port

    from services.gateway.settings import GatewaySettings

    kafka = start_tansu("127.0.0.1", find_free_port())
    redis_proc = start_redis("127.0.0.1", find_free_port())
    state = Path(tempfile.mkdtemp(prefix="lgc-cache-bench-"))
    settings = GatewaySettings(
        kafka_bootstrap=kafka.address,
        redis_url=redis_proc.address,
        state_dir=state,
        topic_prefix="bench",
        gateway_http_port=find_free_port(),
        gateway_grpc_port=find_free_port(),
        log_level="WARNING",
        request_topic_partitions=1,
        topic_partitions=1,
        gateway_semantic_cache_enabled=True,
    )
    redis = aioredis.from_url(settings.redis_url)
    registry = WorkerRegistry(redis, prefix=settings.topic_prefix, ttl_s=3600)
    await registry.register(
        WorkerInfo(worker_id="bench", address="127.0.0.1:1", model=MODEL, backend="simulated", capacity=64, simulated=True)
    )
    topics = Topics.from_settings(settings)
    await ensure_topics(settings, topics.cluster_topics(settings))
    producer = make_producer(settings, client_id="bench-responder")
    await producer.start()
    consumer = make_consumer(settings, *topics.all_requests, client_id="bench-responder", group_id=None)
    await consumer.start()

    async def respond() -> None:
        # Stand-in for the batcher: a fixed answer to every request, on its reply_to topic.
        async for record in consumer:
            request = GenerationRequest.from_bytes(record.value)
            if request.reply_to is None:
                continue
            final = ReplyEvent(
                request_id=request.id, kind=ReplyKind.FINAL, seq=0, text="A cached answer.",
                finish_reason=FinishReason.STOP, usage=Usage(prompt_tokens=8, completion_tokens=4), model=request.model,
            )
            await producer.send_and_wait(request.reply_to, final.to_bytes(), key=request.id)

    responder = asyncio.create_task(respond())
    env = {
        **os.environ,
        "LGC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LGC_REDIS_URL": settings.redis_url,
        "LGC_STATE_DIR": str(state),
        "LGC_TOPIC_PREFIX": settings.topic_prefix,
        "LGC_GATEWAY_HTTP_PORT": str(settings.gateway_http_port),
        "LGC_GATEWAY_GRPC_PORT": str(settings.gateway_grpc_port),
        "LGC_LOG_LEVEL": "WARNING",
        "LGC_REQUEST_TOPIC_PARTITIONS": "1",
        "LGC_TOPIC_PARTITIONS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    api_key: str | None = None
    if args.with_keys:
        # A keyed tenant with every limit on, so each hit also pays for the key lookup and the
        # Redis rate-limit script (limits far above what the benchmark sends: nothing is refused).
        api_key = "lgc-bench-key-0001"
        keys_file = state / "keys.json"
        keys_file.write_text(json.dumps({api_key: {
            "name": "bench", "requests_per_min": 10_000_000, "tokens_per_min": 1_000_000_000, "max_concurrent": 1000,
        }}))
        env["LGC_API_KEYS_FILE"] = str(keys_file)
        settings = settings.model_copy(update={"api_keys_file": keys_file})
    if args.in_process:
        from services.gateway.service import GatewayService

        service = GatewayService(settings)
        await service.start()
        try:
            return await run_bench(
                f"http://127.0.0.1:{service.http_port}", MODEL, args.exact, args.pairs, service, api_key
            )
        finally:
            await service.stop()
            responder.cancel()
            await asyncio.gather(responder, return_exceptions=True)
            await consumer.stop()
            await producer.stop()
            await redis.aclose()
            redis_proc.stop(grace_s=3)
            kafka.stop(grace_s=3)
    gateway = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env)
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", settings.gateway_http_port, 120.0, gateway)
        return await run_bench(
            f"http://127.0.0.1:{settings.gateway_http_port}", MODEL, args.exact, args.pairs, None, api_key
        )
    finally:
        gateway.terminate()
        await asyncio.to_thread(gateway.wait, 30)
        responder.cancel()
        await asyncio.gather(responder, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
        await redis.aclose()
        redis_proc.stop(grace_s=3)
        kafka.stop(grace_s=3)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway (default: start everything on loopback)")
    parser.add_argument("--model", default="", help="model name with --url (default: the cluster's first)")
    parser.add_argument("--exact", type=int, default=200, help="exact-hit requests to time")
    parser.add_argument("--pairs", type=int, default=240, help="pairs to use from each data set")
    parser.add_argument(
        "--in-process", action="store_true", help="run the gateway in this process (no process hops per request)"
    )
    parser.add_argument(
        "--with-keys", action="store_true",
        help="embedded: require an API key whose tenant has request, token and concurrency limits (Redis script per request)",
    )
    parser.add_argument("--api-key", default=None, help="API key to send with --url")
    args = parser.parse_args()
    if args.url:
        result = await run_bench(args.url, args.model, args.exact, args.pairs, None, args.api_key)
    else:
        result = await embedded(args)
    result["mode"] = "external" if args.url else (
        "embedded, gateway in-process, stand-in batcher" if args.in_process else "embedded, gateway process, stand-in batcher"
    )
    result["keys_and_limits"] = bool(args.with_keys or args.api_key)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
