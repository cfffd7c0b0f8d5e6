"""Pipeline benchmark: what the cluster itself costs, measured from the gateway, with `simulated`
workers (no model), and how well high priority is isolated from low-priority overload.

Prints one JSON object. Not a test: numbers depend on the machine (see services/batcher/README.md
for recorded runs and the targets of issue 3).

Three phases, each on its own embedded cluster (`EmbeddedCluster`, simulated workers, caches,
guardian and scaler off so that only the serving path runs) unless `--url` names a running one:

1. **throughput / added latency:** zero-compute workers (`--sim-tokens-per-s` 1e6, TTFT 0) and a
   closed loop of C clients for each concurrency C in `--concurrency` (each level bounded by
   `--seconds` and `--max-requests`). Non-streaming chat completions of `--max-tokens` tokens.
   Reported: requests/s, end-to-end latency percentiles, and the *added* latency = end-to-end
   minus the simulated generation time (TTFT + tokens / rate), i.e. gateway in -> reply out
   minus the worker's time.
2. **direct (Kafka in -> reply out, no gateway):** the same zero-compute workers, requests
   produced straight onto `lgc.requests.normal` at each concurrency and their terminal ReplyEvent
   read from a reply topic of this script's: what the batcher + workers + broker cost without the
   HTTP gateway (started here only; with `--url` this phase is skipped).
3. **priority isolation:** slow simulated workers with a known capacity
   (`--iso-workers` × `--iso-batch` sequences at `--iso-tokens-per-s`, `--iso-max-tokens` each).
   A high-priority streaming probe at `--probe-rps` measures TTFT alone (unloaded), then again
   while low-priority requests arrive open-loop at `--overload`× that capacity.

Usage:

    .venv/bin/python load-tests/pipeline_bench.py                       # all phases, ~3 min
    .venv/bin/python load-tests/pipeline_bench.py --phases throughput --concurrency 1,16,256
    .venv/bin/python load-tests/pipeline_bench.py --url http://127.0.0.1:8000 --phases throughput
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared import event_loop  # noqa: E402 - after the repository is on the path


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[k] * 1000, 2)


@contextlib.contextmanager
def _cluster(
    url: str | None, workers: int, env: dict[str, str], log: Path, *, want_settings: bool = False
) -> Iterator[tuple]:
    """A running cluster's HTTP URL (and its service pids, when started here; and its settings
    with `want_settings`)."""
    if url:
        yield (url, {}, None) if want_settings else (url, {})
        return
    from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
    from shared.launcher.output import FileSink
    from shared.launcher.ports import free_port_settings

    state = Path(tempfile.mkdtemp(prefix="lgc-bench-"))
    settings = free_port_settings(
        workers=workers, worker_backend="simulated", state_dir=state, start_guardian=False, start_scaler=False,
        log_level="WARNING",
    )
    base_env = {
        "LGC_GATEWAY_CACHE_ENABLED": "false",
        "LGC_GATEWAY_SEMANTIC_CACHE_ENABLED": "false",
        "LGC_GATEWAY_MAX_INFLIGHT": "4096",
    }
    base_env.update(env)
    with EmbeddedCluster(ClusterConfig(settings=settings, log_sink=FileSink(log), extra_env=base_env)) as cluster:
        if want_settings:
            client = cluster.settings.model_copy(
                update={"kafka_bootstrap": cluster.kafka_bootstrap, "redis_url": cluster.redis_url}
            )
            yield cluster.http_url, dict(cluster.pids), client
        else:
            yield cluster.http_url, dict(cluster.pids)


def _http_client(timeout_s: float) -> aiohttp.ClientSession:
    """The load generator's HTTP client: aiohttp, with no cap on connections (each simulated
    client keeps one). httpx was used before; its own CPU per request grew with the number of
    open connections (13 ms at 256 concurrent clients, more than the whole cluster spent), so the
    benchmark measured its client, not the cluster."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    try:
        import psutil
    except ImportError:  # Safe: CPU accounting is optional context for the numbers.
        return {}
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue  # Safe: a process that ended has no CPU time to report.
    if out:
        # This process: the load-generating client (and the launcher's log copying), which shares
        # the same cores as the cluster; its children are the services, counted above.
        own = psutil.Process().cpu_times()
        out["client"] = own.user + own.system
    return out


def _body(max_tokens: int, *, stream: bool = False, priority: str | None = None, n: int = 0) -> dict:
    body = {
        "model": "simulated",
        "messages": [{"role": "user", "content": f"bench {n}"}],
        "max_tokens": max_tokens,
        "stream": stream,
        "temperature": 0.7,
    }
    if priority:
        body["priority"] = priority
    return body


async def _closed_loop(
    client: aiohttp.ClientSession, url: str, concurrency: int, seconds: float, max_requests: int, max_tokens: int
) -> dict:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    stop_at = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal issued
        while time.perf_counter() < stop_at and issued < max_requests:
            issued += 1
            start = time.perf_counter()
            try:
                async with client.post(f"{url}/v1/chat/completions", json=_body(max_tokens, n=issued)) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Counted, not raised: the benchmark reports failures instead of stopping.
                errors[type(exc).__name__] += 1
                continue
            if response.status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors[str(response.status)] += 1

    began = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {"latencies": latencies, "errors": dict(errors), "elapsed_s": elapsed}


async def _throughput(args: argparse.Namespace) -> dict:
    sim_gen_s = args.sim_ttft_ms / 1000 + args.max_tokens / args.sim_tokens_per_s
    env = {
        "LGC_SIMULATED_TOKENS_PER_S": str(args.sim_tokens_per_s),
        "LGC_SIMULATED_TTFT_MS": str(args.sim_ttft_ms),
        "LGC_WORKER_MAX_BATCH_SIZE": str(args.sim_batch),
    }
    levels = []
    with _cluster(args.url, args.workers, env, args.log_dir / "throughput.log") as (url, pids):
        async with _http_client(120) as client:
            await _closed_loop(client, url, 4, 2.0, 200, args.max_tokens)  # warm-up (connections, JIT-less paths)
            for c in args.concurrency:
                cpu0 = _cpu_seconds(pids)
                run = await _closed_loop(client, url, c, args.seconds, args.max_requests, args.max_tokens)
                cpu1 = _cpu_seconds(pids)
                lat = run["latencies"]
                added = [max(0.0, x - sim_gen_s) for x in lat]
                levels.append({
                    "concurrency": c,
                    "requests": len(lat),
                    "requests_per_s": round(len(lat) / run["elapsed_s"], 1),
                    "latency_ms": {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99)},
                    "added_latency_ms": {"p50": _pct(added, 50), "p90": _pct(added, 90), "p99": _pct(added, 99)},
                    "errors": run["errors"],
                    "cpu_s_per_request": {
                        k: round((cpu1[k] - cpu0.get(k, 0.0)) / max(1, len(lat)) * 1000, 3) for k in cpu1
                    } if cpu1 else {},
                })
                print(json.dumps({"progress": levels[-1]}), file=sys.stderr, flush=True)
    return {
        "simulated_generation_ms": round(sim_gen_s * 1000, 3),
        "workers": args.workers,
        "max_tokens": args.max_tokens,
        "cpu_ms_per_request_note": "cpu_s_per_request values are CPU milliseconds per request per process",
        "levels": levels,
    }


async def _direct(args: argparse.Namespace) -> dict:
    from shared.kafka_clients import make_consumer, make_producer
    from shared.records import GenerationParams, GenerationRequest, Priority, ReplyEvent
    from shared.topics import Topics, TopicSpec, ensure_topics

    sim_gen_s = args.sim_ttft_ms / 1000 + args.max_tokens / args.sim_tokens_per_s
    env = {
        "LGC_SIMULATED_TOKENS_PER_S": str(args.sim_tokens_per_s),
        "LGC_SIMULATED_TTFT_MS": str(args.sim_ttft_ms),
        "LGC_WORKER_MAX_BATCH_SIZE": str(args.sim_batch),
    }
    levels = []
    with _cluster(None, args.workers, env, args.log_dir / "direct.log", want_settings=True) as (_url, pids, settings):
        topics = Topics.from_settings(settings)
        reply_topic = f"{settings.topic_prefix}.replies.bench"
        await ensure_topics(settings, [TopicSpec(reply_topic, 1, 1)])
        producer = make_producer(settings, client_id="bench")
        replies = make_consumer(settings, reply_topic, client_id="bench-replies", group_id=None)
        await producer.start()
        await replies.start()
        pending: dict[str, asyncio.Future[float]] = {}

        async def read() -> None:
            while True:
                for records in (await replies.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = ReplyEvent.from_bytes(record.value)
                        future = pending.pop(event.request_id, None) if event.terminal else None
                        if future is not None and not future.done():
                            future.set_result(time.perf_counter())

        reader = asyncio.create_task(read())
        try:
            for c in args.concurrency:
                latencies: list[float] = []
                stop_at = time.perf_counter() + args.seconds
                issued = 0

                async def one_client() -> None:
                    nonlocal issued
                    while time.perf_counter() < stop_at and issued < args.max_requests:
                        issued += 1
                        request = GenerationRequest(
                            id=f"b{issued}-{time.monotonic_ns()}", model="simulated", prompt=f"bench {issued}",
                            params=GenerationParams(max_new_tokens=args.max_tokens, temperature=0.7), reply_to=reply_topic,
                        )
                        future = asyncio.get_running_loop().create_future()
                        pending[request.id] = future
                        start = time.perf_counter()
                        await producer.send_and_wait(topics.requests(Priority.NORMAL), request.to_bytes(), key=request.id)
                        latencies.append(await asyncio.wait_for(future, 120) - start)

                cpu0 = _cpu_seconds(pids)
                began = time.perf_counter()
                await asyncio.gather(*(one_client() for _ in range(c)))
                elapsed = time.perf_counter() - began
                cpu1 = _cpu_seconds(pids)
                added = [max(0.0, x - sim_gen_s) for x in latencies]
                levels.append({
                    "concurrency": c,
                    "requests": len(latencies),
                    "requests_per_s": round(len(latencies) / elapsed, 1),
                    "added_latency_ms": {"p50": _pct(added, 50), "p90": _pct(added, 90), "p99": _pct(added, 99)},
                    "cpu_ms_per_request": {
                        k: round((cpu1[k] - cpu0.get(k, 0.0)) / max(1, len(latencies)) * 1000, 3) for k in cpu1
                    } if cpu1 else {},
                })
                print(json.dumps({"progress_direct": levels[-1]}), file=sys.stderr, flush=True)
        finally:
            reader.cancel()
            await replies.stop()
            await producer.stop()
    return {"workers": args.workers, "max_tokens": args.max_tokens, "levels": levels}


async def _probe_ttft(
    client: aiohttp.ClientSession, url: str, seconds: float, rps: float, max_tokens: int, errors: Counter | None = None
) -> list[float]:
    ttfts: list[float] = []
    errors = Counter() if errors is None else errors

    async def one(n: int) -> None:
        start = time.perf_counter()
        try:
            async with client.post(
                f"{url}/v1/chat/completions", json=_body(max_tokens, stream=True, priority="high", n=n)
            ) as response:
                if response.status != 200:
                    errors[str(response.status)] += 1
                    return
                async for raw in response.content:
                    line = raw.decode()
                    if line.startswith("data: ") and '"content"' in line and '"content":""' not in line.replace(" ", ""):
                        ttfts.append(time.perf_counter() - start)
                        return
                errors["no content"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1  # Safe: a failed probe has no TTFT; counted instead

    tasks = []
    stop_at = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < stop_at:
        tasks.append(asyncio.create_task(one(n)))
        n += 1
        await asyncio.sleep(1 / rps)
    await asyncio.gather(*tasks)
    return ttfts


async def _open_loop_low(client: aiohttp.ClientSession, url: str, rps: float, max_tokens: int, stop: asyncio.Event, stats: Counter) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        try:
            async with client.post(f"{url}/v1/chat/completions", json=_body(max_tokens, priority="low", n=n)) as r:
                await r.read()
                stats[str(r.status)] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats[type(exc).__name__] += 1  # Safe: counted; overload may refuse or time out

    n = 0
    interval = 1 / rps
    next_at = time.perf_counter()
    while not stop.is_set():
        t = asyncio.create_task(one(n))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        n += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _isolation(args: argparse.Namespace) -> dict:
    per_request_s = args.iso_ttft_ms / 1000 + args.iso_max_tokens / args.iso_tokens_per_s
    capacity_rps = args.iso_workers * args.iso_batch / per_request_s
    env = {
        "LGC_SIMULATED_TOKENS_PER_S": str(args.iso_tokens_per_s),
        "LGC_SIMULATED_TTFT_MS": str(args.iso_ttft_ms),
        "LGC_WORKER_MAX_BATCH_SIZE": str(args.iso_batch),
    }
    with _cluster(args.url, args.iso_workers, env, args.log_dir / "isolation.log") as (url, _pids):
        async with _http_client(300) as client:
            await _probe_ttft(client, url, 1.0, args.probe_rps, args.iso_max_tokens)  # warm-up
            unloaded_errors: Counter[str] = Counter()
            loaded_errors: Counter[str] = Counter()
            unloaded = await _probe_ttft(
                client, url, args.iso_seconds, args.probe_rps, args.iso_max_tokens, unloaded_errors
            )
            stop = asyncio.Event()
            low_stats: Counter[str] = Counter()
            low = asyncio.create_task(
                _open_loop_low(client, url, args.overload * capacity_rps, args.iso_max_tokens, stop, low_stats)
            )
            await asyncio.sleep(2.0)  # let the backlog build before probing
            loaded = await _probe_ttft(client, url, args.iso_seconds, args.probe_rps, args.iso_max_tokens, loaded_errors)
            stop.set()
            await low
    p99_unloaded, p99_loaded = _pct(unloaded, 99), _pct(loaded, 99)
    return {
        "capacity_requests_per_s": round(capacity_rps, 1),
        "low_offered_requests_per_s": round(args.overload * capacity_rps, 1),
        "low_outcomes_while_probing": dict(low_stats),
        "high_ttft_unloaded_ms": {
            "n": len(unloaded), "p50": _pct(unloaded, 50), "p99": p99_unloaded, "errors": dict(unloaded_errors)
        },
        "high_ttft_under_low_overload_ms": {
            "n": len(loaded), "p50": _pct(loaded, 50), "p99": p99_loaded, "errors": dict(loaded_errors)
        },
        "p99_ratio": round(p99_loaded / p99_unloaded, 2) if p99_loaded and p99_unloaded else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="reuse a running cluster (its workers must be simulated) instead of starting one")
    parser.add_argument("--phases", default="throughput,direct,isolation")
    parser.add_argument("--concurrency", default="1,4,16,64,256,1024", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=6.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sim-tokens-per-s", type=float, default=1_000_000)
    parser.add_argument("--sim-ttft-ms", type=float, default=0)
    parser.add_argument("--sim-batch", type=int, default=512)
    parser.add_argument("--iso-workers", type=int, default=1)
    parser.add_argument("--iso-batch", type=int, default=4)
    parser.add_argument("--iso-tokens-per-s", type=float, default=50)
    parser.add_argument("--iso-ttft-ms", type=float, default=10)
    parser.add_argument("--iso-max-tokens", type=int, default=10)
    parser.add_argument("--iso-seconds", type=float, default=30)
    parser.add_argument("--probe-rps", type=float, default=5)
    parser.add_argument("--overload", type=float, default=3.0)
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    phases = set(args.phases.split(","))
    out: dict = {"note": "simulated workers; numbers measured at the HTTP client on this machine"}
    # The client runs on uvloop too: it shares the cluster's cores, so its own cost per request
    # is cost the cluster does not get.
    if "throughput" in phases:
        out["throughput"] = event_loop.run(_throughput(args), loop="uvloop")
    if "direct" in phases and not args.url:
        out["direct"] = event_loop.run(_direct(args), loop="uvloop")
    if "isolation" in phases:
        out["isolation"] = event_loop.run(_isolation(args), loop="uvloop")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
