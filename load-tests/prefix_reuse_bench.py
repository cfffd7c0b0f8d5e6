"""Prefix reuse: how long the transformers engine's prefill of chat prompts takes with their shared
prefix (the chat template's system turn) run once, against every prompt run whole (the model's
prefill alone, in this process).

    .venv/bin/python load-tests/prefix_reuse_bench.py [--prompts 32] [--repeats 5]

The peer benchmark's chat prompts (`worker_peer_bench.PROMPTS`, through the model's chat template)
are prefilled together as one group (`decode_batch.PrefillRun`, one chunk), `--repeats` times
with a fresh prefix cache (so every run pays for running the prefix once: the first prefill of a
worker) and as often with none. Worker settings come from the environment (`LGC_WORKER_*`):
`LGC_WORKER_LLAMA_DECODE=false` measures transformers' own forward (the path of other
architectures and of CUDA) instead of the Llama steps; `LGC_WORKER_PREFILL_THREADS` sets the torch
threads (default: every usable core).

Prints one JSON object: the prompts' and the shared prefix's lengths, every run's milliseconds and
their medians, and the largest difference between the two ways' logits. A timing, not a test:
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from services.worker.openmp_policy import apply_omp_wait_policy  # noqa: E402
from services.worker.settings import WorkerSettings  # noqa: E402

# Before torch loads (the engine module imports it), as the worker's entry point does.
apply_omp_wait_policy(WorkerSettings())

from worker_peer_bench import PROMPTS  # noqa: E402


def measure(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: transformers takes seconds to import.
    import torch

    from services.worker.decode_batch import PrefillRun
    from services.worker.engine import ChatTurn, WorkItem
    from services.worker.prefix_cache import PrefixCache
    from services.worker.transformers_engine import TransformersEngine

    settings = WorkerSettings()
    engine = TransformersEngine(settings)
    engine.load()
    threads = engine._prefill_threads  # what a prefill on the engine thread runs on
    torch.set_num_threads(threads)
    decoder = engine._decoder
    # Encoded as the worker encodes a chat request (its chat template, generation prompt added).
    prompts = [
        engine._encoder.encode(WorkItem(f"p{i}", messages=(ChatTurn("user", PROMPTS[i % len(PROMPTS)]),))).ids
        for i in range(args.prompts)
    ]
    shared = len(os.path.commonprefix(prompts))

    def prefill(prefixes: PrefixCache | None) -> tuple[float, torch.Tensor]:
        started = time.perf_counter()
        with torch.inference_mode():
            run = PrefillRun(
                engine.model, prompts, engine._pad_id, engine._vocab_size, engine._device, decoder, prefixes
            )
            while not run.done:
                run.advance()
            _, logits = run.result()
        return (time.perf_counter() - started) * 1000, logits

    prefill(None)  # warm-up: first calls allocate and pick kernels
    timings: dict[str, list[float]] = {"whole": [], "prefix_reused": []}
    logits: dict[str, torch.Tensor] = {}  # the last run's of each way
    for _ in range(args.repeats):  # interleaved, so that both see the same minutes of a noisy machine
        for name, prefixes in (("whole", None), ("prefix_reused", PrefixCache(settings.worker_prefix_cache_tokens))):
            ms, logits[name] = prefill(prefixes)
            timings[name].append(ms)
    medians = {name: round(statistics.median(runs), 1) for name, runs in timings.items()}
    return {
        "setup": {
            "prompts": len(prompts), "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
            "shared_prefix_tokens": shared, "repeats": args.repeats, "cpus": os.cpu_count(),
            "threads": threads, "llama_decode": decoder is not None, "dtype": engine.info.dtype,
        },
        "median_ms": medians,
        "ratio_whole_to_reused": round(medians["whole"] / medians["prefix_reused"], 2),
        "runs_ms": {name: [round(ms, 1) for ms in runs] for name, runs in timings.items()},
        "max_logit_difference": float((logits["whole"] - logits["prefix_reused"]).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    main()
