"""A worker's engine alone, in this process: a closed loop of streaming requests with fixed
seeds, so that two builds (or settings) generate the very same tokens and only their speed differs.
The backend is the worker's (`LGC_WORKER_BACKEND`, default transformers; for vllm, run it with the
Python that has vLLM, e.g. `/tmp/vllm-venv/bin/python`).

    .venv/bin/python load-tests/engine_closed_loop.py [--streams 32] [--requests 64]
        [--max-tokens 64] [--temperature 0.7] [--repeats 3] [--seed 0]

What `worker_peer_bench.py` measures through the whole cluster, without the cluster: the same
prompts (`worker_peer_bench.PROMPTS`), `--streams` requests at a time, each ending request starting
the next one at once. Every request has its own seed (`--seed` + its index), so the answers, and
with them where each sequence ends, are the same from run to run and from build to build: the
run-to-run differences left are the machine's. Worker settings come from the environment
(`LGC_WORKER_*`), as for a worker; the thread count defaults to every core, as a worker started
on its own (the embedded cluster gives its worker one core less, `LGC_WORKER_THREADS`).

Prints one JSON object: per run, output tokens/s (tokens / wall time from the first submit to
the last end), TTFT p50/p99, time per output token p50 and the engine's decode steps (count,
median, total, from its observer: the transformers engine reports each step, the vllm backend each
sequence's time per token between two outputs, so there the count is about the tokens); and the
median run. A timing, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from services.worker.openmp_policy import apply_omp_wait_policy  # noqa: E402
from services.worker.settings import WorkerSettings  # noqa: E402

# Before torch loads (the engine module imports it), as the worker's entry point does.
apply_omp_wait_policy(WorkerSettings())

from services.worker.engine import (  # noqa: E402
    ChatTurn,
    NullObserver,
    SamplingParams,
    SequenceFinished,
    TextDelta,
    WorkItem,
)
from worker_peer_bench import PROMPTS  # noqa: E402


class StepTimes(NullObserver):
    """The engine's own decode-step timings (seconds)."""

    def __init__(self) -> None:
        self.steps: list[float] = []

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        self.steps.append(duration_s)


@dataclass
class Outcome:
    sent: float
    first: float | None = None
    end: float = 0.0
    tokens: int = 0
    text: list[str] = field(default_factory=list)


async def one_request(engine: Any, index: int, args: argparse.Namespace) -> Outcome:
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed + index)
    item = WorkItem(
        f"req-{index}", messages=(ChatTurn("user", PROMPTS[index % len(PROMPTS)]),), params=params
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    outcome = Outcome(sent=time.monotonic())
    engine.submit(item, queue.put_nowait)
    while True:
        event = await queue.get()
        if isinstance(event, TextDelta):
            if outcome.first is None:
                outcome.first = time.monotonic()
            outcome.text.append(event.text)
            continue
        outcome.end = time.monotonic()
        if isinstance(event, SequenceFinished):
            outcome.tokens = event.completion_tokens
            return outcome
        raise RuntimeError(f"request {index} failed: {event}")


async def closed_loop(engine: Any, args: argparse.Namespace) -> tuple[list[Outcome], float]:
    next_index = 0
    outcomes: list[Outcome] = []

    async def stream() -> None:
        nonlocal next_index
        while next_index < args.requests:
            index = next_index
            next_index += 1
            outcomes.append(await one_request(engine, index, args))

    started = time.monotonic()
    await asyncio.gather(*(stream() for _ in range(args.streams)))
    return outcomes, time.monotonic() - started


def summarise(outcomes: list[Outcome], elapsed: float, observer: StepTimes) -> dict[str, Any]:
    tokens = sum(o.tokens for o in outcomes)
    ttft = sorted((o.first or o.end) - o.sent for o in outcomes)
    tpot = sorted((o.end - o.first) / (o.tokens - 1) for o in outcomes if o.first is not None and o.tokens > 1)

    def quantile(values: list[float], q: int) -> float | None:
        if len(values) < 2:  # `quantiles` needs two points; one is its own every quantile
            return round(values[0] * 1000, 1) if values else None
        return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)

    return {
        "output_tokens": tokens,
        "elapsed_s": round(elapsed, 3),
        "output_tokens_per_s": round(tokens / elapsed, 1),
        "ttft_ms": {"p50": quantile(ttft, 50), "p99": quantile(ttft, 99)},
        "tpot_ms_p50": quantile(tpot, 50),
        "decode_steps": len(observer.steps),
        "decode_step_ms_p50": round(statistics.median(observer.steps) * 1000, 2) if observer.steps else None,
        "decode_s": round(sum(observer.steps), 3),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: the backends take seconds to import.
    from services.worker.engine_factory import build_engine

    settings = WorkerSettings()
    runs = []
    observer = StepTimes()
    engine = build_engine(settings, observer)
    await engine.start()
    try:
        await closed_loop(engine, argparse.Namespace(**{**vars(args), "requests": args.streams}))  # warm-up
        texts: list[list[str]] = []
        for _ in range(args.repeats):
            observer.steps.clear()
            outcomes, elapsed = await closed_loop(engine, args)
            runs.append(summarise(outcomes, elapsed, observer))
            texts.append(["".join(o.text) for o in sorted(outcomes, key=lambda o: o.sent)])
    finally:
        await engine.stop()
    median = sorted(runs, key=lambda r: r["output_tokens_per_s"])[len(runs) // 2]
    return {
        "setup": {
            "streams": args.streams, "requests": args.requests, "max_tokens": args.max_tokens,
            "temperature": args.temperature, "seed": args.seed, "cpus": os.cpu_count(),
            "threads": settings.worker_threads, "backend": settings.worker_backend, "dtype": engine.info.dtype,
        },
        # Seeded: every run generates the same tokens; a difference would mean nondeterminism.
        "same_tokens_every_run": len({r["output_tokens"] for r in runs}) == 1,
        "median": median,
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
