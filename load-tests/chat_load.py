"""A small OpenAI-compatible load generator: sends streaming chat completions at a fixed
concurrency and prints latency percentiles and throughput as JSON.

Usage (against a running cluster, e.g. `make up` or `lgc up --worker-backend simulated`):

    .venv/bin/python load-tests/chat_load.py --url http://127.0.0.1:8000 --requests 200 --concurrency 32

Every number it prints is measured at the client: TTFT (request sent -> first content chunk),
inter-token latency (between content chunks), end-to-end latency, output tokens/s (usage from
the final chunk), and errors by HTTP status. The run is bounded by --requests and --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[k] * 1000, 2)


async def _one(client: httpx.AsyncClient, url: str, body: dict, stats: dict) -> None:
    start = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    tokens = 0
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                stats["errors"][str(response.status_code)] = stats["errors"].get(str(response.status_code), 0) + 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        elif last is not None:
                            gaps.append(now - last)
                        last = now
    except httpx.HTTPError as exc:
        # Counted, not raised: a load test reports failures instead of stopping at the first.
        stats["errors"][type(exc).__name__] = stats["errors"].get(type(exc).__name__, 0) + 1
        return
    end = time.perf_counter()
    stats["e2e"].append(end - start)
    if first is not None:
        stats["ttft"].append(first - start)
    stats["itl"].extend(gaps)
    stats["tokens"] += tokens


async def run(args: argparse.Namespace) -> dict:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "priority": args.priority,
    }
    stats: dict = {"e2e": [], "ttft": [], "itl": [], "tokens": 0, "errors": {}}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        if not args.model:
            body["model"] = (await client.get(f"{args.url}/v1/models")).json()["data"][0]["id"]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                await _one(client, args.url, body, stats)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "model": body["model"],
        "max_tokens": args.max_tokens,
        "elapsed_s": round(elapsed, 3),
        "ok": len(stats["e2e"]),
        "errors": stats["errors"],
        "requests_per_s": round(len(stats["e2e"]) / elapsed, 2),
        "output_tokens_per_s": round(stats["tokens"] / elapsed, 2),
        "ttft_ms": {"p50": _pct(stats["ttft"], 50), "p99": _pct(stats["ttft"], 99)},
        "itl_ms": {"p50": _pct(stats["itl"], 50), "p99": _pct(stats["itl"], 99)},
        "e2e_ms": {"p50": _pct(stats["e2e"], 50), "p99": _pct(stats["e2e"], 99),
                   "mean": round(statistics.fmean(stats["e2e"]) * 1000, 2) if stats["e2e"] else None},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="", help="default: the first model in /v1/models")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    parser.add_argument("--prompt", default="Write a short poem about the sea.")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
