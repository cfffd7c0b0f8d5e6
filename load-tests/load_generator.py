"""OpenAI-compatible load generator: open-loop arrivals (Poisson or fixed rate, in phases), a
concurrency limit, a priority mix, a cache-hit mix (a share of requests repeat prompts from a small
pool, deterministically, so the gateway's caches can answer them) and streaming. Shows a progress
bar; writes a JSON report and a PNG chart.

Usage (against a running cluster, e.g. `make up ARGS="--worker-backend simulated --workers 2"`):

    .venv/bin/python load-tests/load_generator.py --scenario load-tests/scenarios/steady.json \\
        --url http://127.0.0.1:8000 --out load-tests/out

or without a scenario file: `--rate 5 --duration 30 --concurrency 32 --priority-mix high=1,normal=3`.

Measured at the client, per request: TTFT (sent -> first content chunk), inter-token latency (gaps
between content chunks), time per output token ((e2e - TTFT) / (tokens - 1)), end-to-end latency,
and the time a request waited at the client for a free concurrency slot (open-loop arrivals keep
their schedule; that wait shows when the limit, not the cluster, was the bottleneck). Reported
overall, per priority and per cache status (`X-LGC-Cache` header): percentiles, throughput
(requests/s, output tokens/s) and errors by HTTP status or exception.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

__all__ = [
    "PRIORITIES",
    "Phase",
    "RequestOutcome",
    "RequestPlan",
    "Scenario",
    "build_report",
    "load_scenario",
    "plan_requests",
    "run_http",
    "run_schedule",
    "write_chart",
    "write_outputs",
]

PRIORITIES = ("high", "normal", "low")
#: Topics for unique prompts; numbers make every unique prompt a different text (cache misses).
_TOPICS = ("the sea", "a mountain", "a city at night", "autumn", "a robot", "the desert", "a library", "rain")


@dataclass(frozen=True)
class Phase:
    """A stretch of time with one arrival rate."""

    duration_s: float
    rate_per_s: float


@dataclass(frozen=True)
class Scenario:
    """What load to send (a JSON file in load-tests/scenarios)."""

    name: str
    description: str = ""
    arrival: str = "poisson"
    """`poisson` (exponential gaps) or `fixed` (evenly spaced)."""
    phases: tuple[Phase, ...] = (Phase(30.0, 2.0),)
    concurrency: int = 32
    priority_mix: dict[str, float] = field(default_factory=lambda: {"normal": 1.0})
    cache_hit_ratio: float = 0.0
    """Share of requests that repeat a prompt from a pool of `prompt_pool_size` (temperature 0)."""
    prompt_pool_size: int = 8
    max_tokens: int = 32
    stream: bool = True
    temperature: float = 0.7
    """Temperature of unique prompts (repeated ones always use 0, so they are cacheable)."""
    seed: int = 1
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.arrival not in ("poisson", "fixed"):
            raise ValueError(f"arrival must be poisson or fixed, not {self.arrival!r}")
        if not self.phases or any(p.duration_s <= 0 or p.rate_per_s <= 0 for p in self.phases):
            raise ValueError("every phase needs a positive duration_s and rate_per_s")
        unknown = set(self.priority_mix) - set(PRIORITIES)
        if unknown or not self.priority_mix or any(w < 0 for w in self.priority_mix.values()):
            raise ValueError(f"priority_mix takes non-negative weights for {PRIORITIES}, got {self.priority_mix}")
        if not 0 <= self.cache_hit_ratio <= 1:
            raise ValueError("cache_hit_ratio must be within [0, 1]")
        if self.concurrency < 1 or self.max_tokens < 1 or self.prompt_pool_size < 1:
            raise ValueError("concurrency, max_tokens and prompt_pool_size must be at least 1")

    def scaled(self, time_scale: float) -> Scenario:
        """The same shape, with every phase `time_scale` times as long (smoke runs)."""
        phases = tuple(Phase(p.duration_s * time_scale, p.rate_per_s) for p in self.phases)
        return Scenario(**{**asdict(self), "phases": phases})


def load_scenario(path: Path) -> Scenario:
    raw = json.loads(path.read_text())
    raw["phases"] = tuple(Phase(**p) for p in raw.get("phases", [{"duration_s": 30, "rate_per_s": 2}]))
    return Scenario(**raw)


@dataclass(frozen=True)
class RequestPlan:
    """One request to send: when (seconds after the start), at which priority, with which prompt."""

    index: int
    at_s: float
    priority: str
    prompt: str
    temperature: float
    repeated: bool


def plan_requests(scenario: Scenario) -> list[RequestPlan]:
    """The whole schedule, decided up front from the scenario's seed (reproducible runs)."""
    rng = random.Random(scenario.seed)
    names = list(scenario.priority_mix)
    weights = [scenario.priority_mix[n] for n in names]
    pool = [f"In one sentence, what is special about {topic}?" for topic in _TOPICS]
    pool = [pool[i % len(pool)] + ("" if i < len(pool) else f" (variant {i})") for i in range(scenario.prompt_pool_size)]
    plans: list[RequestPlan] = []
    start = 0.0
    for phase in scenario.phases:
        t = start
        while True:
            gap = rng.expovariate(phase.rate_per_s) if scenario.arrival == "poisson" else 1.0 / phase.rate_per_s
            t += gap
            if t >= start + phase.duration_s:
                break
            repeated = rng.random() < scenario.cache_hit_ratio
            if repeated:
                prompt, temperature = rng.choice(pool), 0.0
            else:
                topic = rng.choice(_TOPICS)
                prompt = f"Write a short note about {topic}. Reference {len(plans)}-{rng.randrange(10**9)}."
                temperature = scenario.temperature
            plans.append(RequestPlan(len(plans), t, rng.choices(names, weights)[0], prompt, temperature, repeated))
        start += phase.duration_s
    return plans


@dataclass
class RequestOutcome:
    """What happened to one request, as seen by the client."""

    index: int
    priority: str
    sent_s: float
    """Seconds after the run's start when it was sent."""
    client_wait_s: float
    """Time it waited for a concurrency slot after its scheduled arrival."""
    ok: bool = False
    error: str | None = None
    cache: str = "unknown"
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    inter_token_s: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


async def _send_http(
    client: httpx.AsyncClient, url: str, model: str, scenario: Scenario, plan: RequestPlan, outcome: RequestOutcome
) -> None:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": plan.prompt}],
        "max_tokens": scenario.max_tokens,
        "temperature": plan.temperature,
        "stream": scenario.stream,
        "priority": plan.priority,
    }
    if scenario.stream:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    last: float | None = None
    chunks = 0
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            outcome.cache = response.headers.get("x-lgc-cache", "unknown")
            if response.status_code != 200:
                await response.aread()
                outcome.error = f"http_{response.status_code}"
                return
            if not scenario.stream:
                payload = json.loads(await response.aread())
                outcome.output_tokens = (payload.get("usage") or {}).get("completion_tokens", 0)
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("error"):
                        outcome.error = f"stream_{chunk['error'].get('code') or chunk['error'].get('type')}"
                    if chunk.get("usage"):
                        outcome.output_tokens = chunk["usage"].get("completion_tokens", 0)
                    for choice in chunk.get("choices", []):
                        if choice.get("delta", {}).get("content"):
                            now = time.perf_counter()
                            chunks += 1
                            if outcome.ttft_s is None:
                                outcome.ttft_s = now - start
                            elif last is not None:
                                outcome.inter_token_s.append(now - last)
                            last = now
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        # Counted, not raised: a load test reports failures instead of stopping at the first.
        outcome.error = type(exc).__name__
        return
    if outcome.error is None:
        outcome.ok = True
        outcome.e2e_s = time.perf_counter() - start
        outcome.output_tokens = outcome.output_tokens or chunks


async def run_schedule(
    plans: list[RequestPlan],
    concurrency: int,
    send: Callable[[RequestPlan, RequestOutcome], Awaitable[None]],
    *,
    progress: bool = True,
    label: str = "",
) -> tuple[list[RequestOutcome], float]:
    """Send every planned request at its time (open loop), at most `concurrency` at once."""
    slots = asyncio.Semaphore(concurrency)
    outcomes: list[RequestOutcome] = []
    bar = tqdm(total=len(plans), desc=label or "requests", unit="req", disable=not progress, file=sys.stderr)
    start = time.perf_counter()

    async def one(plan: RequestPlan) -> None:
        async with slots:
            now = time.perf_counter() - start
            outcome = RequestOutcome(plan.index, plan.priority, sent_s=now, client_wait_s=max(0.0, now - plan.at_s))
            outcomes.append(outcome)
            try:
                await send(plan, outcome)
            finally:
                bar.update(1)
                bar.set_postfix(errors=sum(1 for o in outcomes if o.error), refresh=False)

    tasks = []
    for plan in plans:
        delay = plan.at_s - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(plan)))
    await asyncio.gather(*tasks)
    bar.close()
    return sorted(outcomes, key=lambda o: o.index), time.perf_counter() - start


async def run_http(
    scenario: Scenario, url: str, *, model: str = "", progress: bool = True
) -> tuple[list[RequestOutcome], float]:
    """Run a scenario against an OpenAI-compatible HTTP endpoint."""
    plans = plan_requests(scenario)
    limits = httpx.Limits(max_connections=scenario.concurrency, max_keepalive_connections=scenario.concurrency)
    async with httpx.AsyncClient(timeout=scenario.timeout_s, limits=limits) as client:
        if not model:
            model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]

        async def send(plan: RequestPlan, outcome: RequestOutcome) -> None:
            await _send_http(client, url, model, scenario, plan, outcome)

        return await run_schedule(plans, scenario.concurrency, send, progress=progress, label=scenario.name)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pct(p: float) -> float:
        k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
        return round(ordered[k] * 1000, 2)

    return {
        "p50": pct(50),
        "p90": pct(90),
        "p95": pct(95),
        "p99": pct(99),
        "max": round(ordered[-1] * 1000, 2),
        "mean": round(sum(ordered) / len(ordered) * 1000, 2),
    }


def _summary(outcomes: list[RequestOutcome], elapsed_s: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    tokens = sum(o.output_tokens for o in ok)
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": dict(Counter(o.error for o in outcomes if o.error)),
        "requests_per_s": round(len(ok) / elapsed_s, 3) if elapsed_s else None,
        "output_tokens_per_s": round(tokens / elapsed_s, 2) if elapsed_s else None,
        "output_tokens": tokens,
        "ttft_ms": _percentiles([o.ttft_s for o in ok if o.ttft_s is not None]),
        "tpot_ms": _percentiles([t for o in ok if (t := o.tpot_s) is not None]),
        "itl_ms": _percentiles([g for o in ok for g in o.inter_token_s]),
        "e2e_ms": _percentiles([o.e2e_s for o in ok if o.e2e_s is not None]),
        "client_wait_ms": _percentiles([o.client_wait_s for o in outcomes]),
    }


def build_report(scenario: Scenario, outcomes: list[RequestOutcome], elapsed_s: float, **extra: Any) -> dict[str, Any]:
    """The JSON report: overall, per priority, per cache status."""
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "settings": {
            "arrival": scenario.arrival,
            "phases": [asdict(p) for p in scenario.phases],
            "concurrency": scenario.concurrency,
            "priority_mix": scenario.priority_mix,
            "cache_hit_ratio": scenario.cache_hit_ratio,
            "max_tokens": scenario.max_tokens,
            "stream": scenario.stream,
        },
        **extra,
        "elapsed_s": round(elapsed_s, 3),
        "overall": _summary(outcomes, elapsed_s),
        "by_priority": {
            p: _summary([o for o in outcomes if o.priority == p], elapsed_s)
            for p in PRIORITIES
            if any(o.priority == p for o in outcomes)
        },
        "by_cache": {
            c: _summary([o for o in outcomes if o.cache == c], elapsed_s) for c in sorted({o.cache for o in outcomes})
        },
    }


def write_chart(report: dict[str, Any], outcomes: list[RequestOutcome], path: Path) -> None:
    """A PNG with four panels: TTFT and e2e by priority (CDF), throughput over time, ITL histogram."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    fig.suptitle(f"{report['scenario']}: {report['overall']['ok']}/{report['overall']['requests']} ok, "
                 f"{report['overall']['requests_per_s']} req/s, {report['overall']['output_tokens_per_s']} tok/s")
    for ax, attr, title in ((axes[0][0], "ttft_s", "Time to first token"), (axes[0][1], "e2e_s", "End-to-end latency")):
        for priority in PRIORITIES:
            values = sorted(getattr(o, attr) * 1000 for o in outcomes if o.ok and o.priority == priority and getattr(o, attr) is not None)
            if values:
                ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=f"{priority} (n={len(values)})")
        ax.set_title(f"{title} (CDF)")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[1][0]
    elapsed = max(report["elapsed_s"], 1e-6)
    width = max(elapsed / 40, 0.25)
    bins = [i * width for i in range(int(elapsed / width) + 2)]
    done = [o.sent_s + (o.e2e_s or 0) for o in outcomes if o.ok]
    failed = [o.sent_s for o in outcomes if not o.ok]
    ax.hist([o.sent_s for o in outcomes], bins=bins, alpha=0.5, label="sent")
    ax.hist(done, bins=bins, alpha=0.5, label="completed")
    if failed:
        ax.hist(failed, bins=bins, alpha=0.7, label="failed", color="red")
    ax.set_title(f"Requests per {width:.2f} s bin")
    ax.set_xlabel("seconds since start")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1][1]
    gaps = [g * 1000 for o in outcomes if o.ok for g in o.inter_token_s]
    if gaps:
        ax.hist(gaps, bins=50)
    ax.set_title(f"Inter-token latency (n={len(gaps)})")
    ax.set_xlabel("ms")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(report: dict[str, Any], outcomes: list[RequestOutcome], out: Path, *, charts: bool = True) -> Path:
    """`<out>/<scenario>.json` (+ `.png`); returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{report['scenario']}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    if charts:
        write_chart(report, outcomes, out / f"{report['scenario']}.png")
    return json_path


def _parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        mix[name.strip()] = float(weight or 1)
    return mix


def _scenario_from_args(args: argparse.Namespace) -> Scenario:
    if args.scenario:
        scenario = load_scenario(Path(args.scenario))
    else:
        scenario = Scenario(
            name=args.name,
            arrival=args.arrival,
            phases=(Phase(args.duration, args.rate),),
            concurrency=args.concurrency,
            priority_mix=_parse_mix(args.priority_mix),
            cache_hit_ratio=args.cache_hit_ratio,
            max_tokens=args.max_tokens,
            stream=not args.no_stream,
        )
    return scenario.scaled(args.time_scale) if args.time_scale != 1 else scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway (or NGINX) base URL")
    parser.add_argument("--model", default="", help="default: the first model in /v1/models")
    parser.add_argument("--scenario", help="a scenario JSON file (load-tests/scenarios/*.json); overrides the flags below")
    parser.add_argument("--name", default="adhoc")
    parser.add_argument("--arrival", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--rate", type=float, default=2.0, help="arrivals per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--priority-mix", default="normal=1", help="e.g. high=1,normal=3,low=1")
    parser.add_argument("--cache-hit-ratio", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every phase's duration")
    parser.add_argument("--out", default="load-tests/out", help="folder for <scenario>.json and .png")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    try:
        scenario = _scenario_from_args(args)
    except (ValueError, TypeError, OSError, json.JSONDecodeError) as exc:
        parser.error(str(exc))
    outcomes, elapsed = asyncio.run(run_http(scenario, args.url, model=args.model, progress=not args.no_progress))
    report = build_report(scenario, outcomes, elapsed, target=args.url, transport="http")
    path = write_outputs(report, outcomes, Path(args.out), charts=not args.no_charts)
    print(json.dumps({"report": str(path), **report["overall"]}, indent=2))
    return 0 if report["overall"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
