"""Chunked prefill: how long a long prompt joining holds up the sequences already decoding, and
its own time to first token, with and without chunks (the transformers engine alone, in this
process).

    .venv/bin/python load-tests/chunked_prefill_bench.py [--long-tokens 1500] [--rows 8]
        [--chunk-tokens 512 1048576] [--repeats 2]

`--rows` greedy sequences start and decode for two seconds; then one prompt of `--long-tokens`
tokens joins. Its prefill runs on the engine thread (`LGC_WORKER_BACKGROUND_PREFILL=false`, as on
a worker whose decode threads take every core), so the running rows wait for it: for its whole
prefill with one chunk (a `--chunk-tokens` above the prompt's length), for one chunk at a time
otherwise. Prefix reuse is off, so every prompt token is run. Other worker settings come from the
environment (`LGC_WORKER_*`): `LGC_WORKER_LLAMA_DECODE=false` measures transformers' own forward
(the path of other models and of CUDA) instead of the Llama steps.

Prints one JSON object: per run, the chunk size, the long prompt's TTFT, the longest gap between
two decode steps of the running rows from its arrival on, and their decode steps during its
prefill; and each chunk size's median run. A timing, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.worker.openmp_policy import apply_omp_wait_policy  # noqa: E402
from services.worker.settings import WorkerSettings  # noqa: E402

# Before torch loads (the engine module imports it), as the worker's entry point does.
apply_omp_wait_policy(WorkerSettings())

from services.worker.engine import NullObserver, SamplingParams, TextDelta, WorkItem  # noqa: E402

#: Text the long prompt is cut from (repeated, then cut to `--long-tokens` tokens).
FILLER = "The quick brown fox jumps over the lazy dog near the river bank. "
#: What each running row is asked to continue (raw prompts, greedy: long answers, few early ends).
RUNNING = "Chapter {row}. The history of the Roman Empire, year by year, in great detail: In the year"


class StepClock(NullObserver):
    """When each decode step ended, and how many rows it had (engine thread)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.rows: list[int] = []

    def decode_step(self, batch_size: int, duration_s: float) -> None:
        self.ends.append(time.monotonic())
        self.rows.append(batch_size)


async def _first_text(queue: asyncio.Queue[Any]) -> None:
    event = await queue.get()
    if not isinstance(event, TextDelta):
        raise RuntimeError(f"a request ended before its first text: {event}")


async def one_run(chunk_tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: transformers takes seconds to import.
    from services.worker.transformers_engine import TransformersEngine

    clock = StepClock()
    settings = WorkerSettings(
        worker_background_prefill=False,
        worker_prefill_chunk_tokens=chunk_tokens,
        worker_prefix_cache_tokens=0,
        worker_max_model_len=args.long_tokens + 64,
    )
    engine = TransformersEngine(settings, clock)
    await engine.start()
    try:
        ids = engine.tokenizer(FILLER * (args.long_tokens // 10 + 1))["input_ids"][: args.long_tokens]
        long_prompt = engine.tokenizer.decode(ids)
        greedy = SamplingParams(max_new_tokens=args.running_tokens, temperature=0.0)
        queues: list[asyncio.Queue[Any]] = []
        for row in range(args.rows):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            engine.submit(WorkItem(f"running-{row}", prompt=RUNNING.format(row=row), params=greedy), queue.put_nowait)
            queues.append(queue)
        for queue in queues:
            await _first_text(queue)
        await asyncio.sleep(args.settle_s)
        joining: asyncio.Queue[Any] = asyncio.Queue()
        sent = time.monotonic()
        engine.submit(
            WorkItem("long", prompt=long_prompt, params=SamplingParams(max_new_tokens=4)), joining.put_nowait
        )
        await _first_text(joining)
        first = time.monotonic()
        await asyncio.sleep(args.settle_s)  # the running rows' step after the prefill
    finally:
        await engine.stop()
    before = [at for at in clock.ends if at < sent]
    after = [at for at in clock.ends if at >= sent]
    gaps = [b - a for a, b in zip(before[-1:] + after, after, strict=False)]
    return {
        "chunk_tokens": chunk_tokens,
        "long_prompt_tokens": len(ids),
        "rows_running": clock.rows[len(before) - 1] if before else 0,
        "ttft_s": round(first - sent, 3),
        "longest_step_gap_s": round(max(gaps), 3) if gaps else None,
        "step_gap_before_p50_s": round(statistics.median(b - a for a, b in zip(before, before[1:])), 3)
        if len(before) > 1
        else None,
        "steps_during_prefill": sum(sent < at < first for at in clock.ends),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for _ in range(args.repeats):
        for chunk_tokens in args.chunk_tokens:
            runs.append(await one_run(chunk_tokens, args))
    medians = {}
    for chunk_tokens in args.chunk_tokens:
        mine = sorted(
            (r for r in runs if r["chunk_tokens"] == chunk_tokens), key=lambda r: r["longest_step_gap_s"] or 0
        )
        medians[str(chunk_tokens)] = mine[len(mine) // 2]
    settings = WorkerSettings()  # what the runs' engines read from the environment
    return {
        "setup": {
            "long_tokens": args.long_tokens, "rows": args.rows, "chunk_tokens": args.chunk_tokens,
            "repeats": args.repeats, "cpus": os.cpu_count(), "threads": settings.worker_threads,
            "llama_decode": settings.worker_llama_decode,
        },
        "median_by_chunk_tokens": medians,
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-tokens", type=int, default=1500)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--running-tokens", type=int, default=400, help="max tokens of each running row")
    parser.add_argument("--chunk-tokens", type=int, nargs="+", default=[512, 1_048_576])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settle-s", type=float, default=2.0, help="decoding before the long prompt, and after")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
