"""The worker against its peers on the same machine and prompts; prints JSON and draws a PNG.

    .venv/bin/python load-tests/worker_peer_bench.py [--out DIR] [--systems a,b,...]
        [--streams 32] [--requests 64] [--max-tokens 64] [--temperature 0.7]
        [--sweep 1,8,32,128,256] [--stream-interval 1] [--vllm-python /path/to/venv-with-vllm/bin/python]
        [--save-requests] [--head-to-head N]

Systems (`--systems`, default all), each sent the same `--requests` streaming chat completions,
`--streams` at a time (closed loop: a stream that ends starts the next request), `--max-tokens`
each, at `--temperature` (top_p 1), prompts from one fixed list of distinct prompts:

* `cluster-transformers`: the whole embedded cluster (`lgc up`: Tansu, Redis, gateway, batcher,
  guardian, one worker; the scaler off) through the gateway's HTTP API, the default backend
  (dtype `auto`: bfloat16 on CPUs with bfloat16 instructions, float32 on the others; the
  report's `setup.cpu_dtype_auto` says which); caches bypassed with `Cache-Control: no-cache, no-store`;
* `cluster-transformers-int8`: the same with `LGC_WORKER_QUANTIZATION=int8` (CPU dynamic int8);
* `cluster-simulated`: the same with the simulated backend (NO MODEL: tokens at
  `LGC_SIMULATED_TOKENS_PER_S` per sequence), which measures the pipeline alone; labelled so;
* `cluster-vllm`: the cluster with `LGC_WORKER_BACKEND=vllm`, the worker run by `--vllm-python`
  (vLLM cannot share the project's environment; skipped without it);
* `sequential-generate`: the seed's approach: one `model.generate` after another in this process
  (in the dtype `auto` takes on this CPU), over `--sequential-requests` requests that all arrive at once, so a request's TTFT
  includes its wait behind the earlier ones, as a client would see it;
* `transformers-serve`: `transformers serve --continuous-batching`, once per dtype of
  `--tserve-dtypes` (default bfloat16 and float32: which is faster depends on the CPU), reported
  with its best one and the others under `dtype_runs`;
* `vllm-serve`: `vllm serve` from `--vllm-python`'s environment (skipped without it), once per
  dtype of `--vllm-dtypes` (default bfloat16 and float32), reported with its best one.

A peer that is not installed is reported as `skipped` with the reason, never estimated.

Measured at the client for every system alike: output tokens/s over the run (completion tokens from
the stream's usage chunk; a server that sends none has its text re-tokenized with the model's
tokenizer, said in `token_count`), TTFT (request sent -> first content chunk), inter-token
latency (gaps between content chunks) and time per output token after the first (per request:
(end - first chunk) / (tokens - 1), comparable across `--stream-interval`s) p50/p99, errors; and the CPU seconds per 1,000 output tokens
of every server process with its descendants (vLLM's engine core runs in a child process).

`--repeats N` (default 3) measures every system N times after one warm-up run
(`--warmup-requests`, default `--streams`: one full wave, so that the first measured run does not
pay a system's first full-batch prefill and steps; 4 requests before 2026-12-06) and reports the
run with
the median output tokens/s, all N under `runs` (this machine's run-to-run noise is about ±15 %);
`sequential-generate` runs once (it takes about a minute).

`--head-to-head N` (0: off) also runs two systems side by side (`--head-to-head-systems`, default
`cluster-transformers,vllm-serve:best`; a peer server's `:best` is the dtype that made the most
tokens/s in this invocation's own runs of it, or, where it did not run, the dtype the worker's
`auto` takes on this CPU: a fixed bfloat16 would pit the cluster against a peer running 4.8x
below its best on a CPU without bfloat16 instructions): both started and warmed up, then N rounds of one run
each, alternating which goes first, so that both are measured within the same minutes of this
noisy machine; reported under `head_to_head` with every round's pair, the ratio of the first to
the second per round, and their medians. The system not being measured sits idle meanwhile (its
CPU seconds during the other's run are reported: `other_idle_cpu_s`), and both sit quiet for
`--head-to-head-pause` seconds (default 10) before each run.

`--save-requests` adds each system's median run request by request (`request_timeline`: when each
was sent, its TTFT and end, its chunks and id), for what percentiles hide: how far apart a wave of
answers ends and the next wave's requests arrive.

`--sweep` runs the first cluster system of `--sweep-system` (default `cluster-transformers`) at
each concurrency (max(concurrency, 4) requests each): throughput must not collapse when streams far
outnumber cores (issue 8, item 7). Writes `DIR/worker_peer_bench.json` and `DIR/worker_peer_bench.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from process_cpu import tree_cpu_seconds  # noqa: E402
from shared.launcher.cluster import ClusterConfig, EmbeddedCluster  # noqa: E402
from shared.launcher.infra import find_free_port  # noqa: E402
from shared.launcher.output import FileSink  # noqa: E402
from shared.launcher.ports import free_port_settings  # noqa: E402
from shared.model_store import prepare_model, resolve_model  # noqa: E402
from shared.settings import default_state_dir  # noqa: E402

SYSTEMS = (
    "cluster-transformers",
    "cluster-transformers-int8",
    "cluster-simulated",
    "cluster-vllm",
    "sequential-generate",
    "transformers-serve",
    "vllm-serve",
)
#: What each system is, for the report and the chart.
LABELS = {
    "cluster-transformers": "cluster, transformers (dtype auto)",
    "cluster-transformers-int8": "cluster, transformers int8",
    "cluster-simulated": "cluster, SIMULATED (no model)",
    "cluster-vllm": "cluster, vllm backend",
    "sequential-generate": "sequential generate (seed)",
    "transformers-serve": "transformers serve --cb",
    "vllm-serve": "vllm serve",
}
TOPICS = (
    "a lighthouse keeper", "a lost kitten", "the first day of school", "a storm at sea", "a robot gardener",
    "an old bicycle", "a city at night", "a mountain village", "a forgotten letter", "a jazz musician",
    "a desert caravan", "a small bakery", "a haunted library", "a winter market", "a river journey",
    "a chess tournament", "a beekeeper", "a space station", "a train station farewell", "a rainy afternoon",
    "a treasure map", "a fox in the snow", "an island festival", "a clockmaker", "a summer thunderstorm",
    "a coral reef", "a retired astronaut", "a street painter", "a midnight train", "an apple orchard",
    "a paper boat", "a violin maker",
)
STYLES = ("Write a short story about {}.", "Describe {} in a few vivid sentences.")
PROMPTS = [style.format(topic) for style in STYLES for topic in TOPICS]
NO_CACHE = {"Cache-Control": "no-cache, no-store"}


@dataclass
class Outcome:
    """One request as the client saw it."""

    ok: bool = False
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    text: str = ""
    usage_tokens: int | None = None
    sent_s: float = 0.0
    """When it was sent, in seconds from the start of its run."""
    response_id: str | None = None
    """The `id` of its chunks (the server's request id: the cluster's logs name it)."""


@dataclass
class Target:
    """Where a system answers OpenAI-compatible requests."""

    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    """Processes whose CPU time the run is charged (empty: not measured)."""
    notes: list[str] = field(default_factory=list)


class Skipped(Exception):
    """A system that cannot run here; the message says why."""


# ------------------------------------------------------------------------------------------ client


async def _stream_one(client: httpx.AsyncClient, target: Target, body: dict[str, Any]) -> Outcome:
    outcome = Outcome()
    start = time.perf_counter()
    last: float | None = None
    parts: list[str] = []
    try:
        async with client.stream(
            "POST", f"{target.url}/v1/chat/completions", json=body, headers=target.headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                outcome.error = f"http_{response.status_code}: {response.text[:200]}"
                return outcome
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                outcome.response_id = outcome.response_id or chunk.get("id")
                if chunk.get("error"):
                    outcome.error = f"stream_error: {json.dumps(chunk['error'])[:200]}"
                if chunk.get("usage"):
                    outcome.usage_tokens = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter()
                        parts.append(content)
                        if outcome.ttft_s is None:
                            outcome.ttft_s = now - start
                        elif last is not None:
                            outcome.gaps_s.append(now - last)
                        last = now
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        # Counted, not raised: a benchmark reports failures instead of stopping at the first.
        outcome.error = f"{type(exc).__name__}: {exc}"
        return outcome
    outcome.text = "".join(parts)
    outcome.ok = outcome.error is None
    outcome.e2e_s = time.perf_counter() - start
    return outcome


async def run_load(
    target: Target, *, requests: int, streams: int, max_tokens: int, temperature: float, timeout_s: float
) -> tuple[list[Outcome], float]:
    """`requests` streaming chat completions, `streams` at a time; returns outcomes and wall time."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def stream() -> None:
            while not queue.empty():
                sent = time.perf_counter() - start
                index = queue.get_nowait()
                body = {
                    "model": target.model,
                    "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                outcome = await _stream_one(client, target, body)
                outcome.sent_s = sent
                outcomes.append(outcome)

        start = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(streams)))
        return outcomes, time.perf_counter() - start


def _ms(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000, 1)


def summarise(outcomes: list[Outcome], elapsed_s: float, tokenizer: Any, *, detail: bool = False) -> dict[str, Any]:
    """Throughput and latency percentiles of one run; with `detail`, also every request's own
    times (`request_timeline`)."""
    ok = [o for o in outcomes if o.ok]
    with_usage = all(o.usage_tokens is not None for o in ok)
    counts = [
        o.usage_tokens if with_usage else len(tokenizer(o.text, add_special_tokens=False)["input_ids"])  # type: ignore[misc]
        for o in ok
    ]
    tokens = sum(counts)
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            key = (o.error or "unknown").split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    gaps = [g for o in ok for g in o.gaps_s]
    tpots = [
        (o.e2e_s - o.ttft_s) / (count - 1)
        for o, count in zip(ok, counts, strict=True)
        if o.e2e_s is not None and o.ttft_s is not None and count > 1
    ]
    summary = {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": errors,
        "first_error": next((o.error for o in outcomes if not o.ok), None),
        "elapsed_s": round(elapsed_s, 2),
        "output_tokens": tokens,
        "token_count": "usage" if with_usage else "re-tokenized",
        "output_tokens_per_s": round(tokens / elapsed_s, 1) if elapsed_s else None,
        "requests_per_s": round(len(ok) / elapsed_s, 2) if elapsed_s else None,
        "ttft_ms": {"p50": _ms([o.ttft_s for o in ok if o.ttft_s is not None], 50),
                    "p99": _ms([o.ttft_s for o in ok if o.ttft_s is not None], 99)},
        "itl_ms": {"p50": _ms(gaps, 50), "p99": _ms(gaps, 99)},
        # Time per output token after the first, per request: unlike the gaps between chunks, the
        # same measure whether a server streams each token or several per chunk.
        "tpot_ms": {"p50": _ms(tpots, 50), "p99": _ms(tpots, 99)},
        "e2e_ms": {"p50": _ms([o.e2e_s for o in ok if o.e2e_s is not None], 50)},
        "mean_tokens_per_request": round(tokens / len(ok), 1) if ok else None,
    }
    if detail:
        summary["request_timeline"] = request_timeline(outcomes)
    return summary


def request_timeline(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Each request in the order it was sent: when (seconds from the run's start), its first
    chunk and its end (seconds after it was sent), its chunks and its id. Shows what percentiles
    hide, e.g. how far apart a wave of answers ends and the next wave's requests arrive."""
    def seconds(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return [
        {
            "sent_s": seconds(o.sent_s),
            "ttft_s": seconds(o.ttft_s),
            "e2e_s": seconds(o.e2e_s),
            "chunks": len(o.gaps_s) + 1 if o.ttft_s is not None else 0,
            "ok": o.ok,
            "id": o.response_id,
        }
        for o in sorted(outcomes, key=lambda o: o.sent_s)
    ]


# ---------------------------------------------------------------------------------------- systems


@contextlib.contextmanager
def cluster(
    backend: str, out: Path, *, extra_env: dict[str, str] | None = None, worker_python: str | None = None
) -> Iterator[Target]:
    """An embedded cluster on free ports with one worker of `backend` (run by `worker_python`, the
    other services by this Python); its log goes to `out`."""
    state = Path(tempfile.mkdtemp(prefix="lgc-peer-bench-"))
    models = default_state_dir() / "models"  # reuse the converted model (the conversion takes ~30 s)
    models.mkdir(parents=True, exist_ok=True)
    (state / "models").symlink_to(models, target_is_directory=True)
    settings = free_port_settings(
        workers=1, worker_backend=backend, worker_python=worker_python, state_dir=state, start_scaler=False,
        log_format="text", log_level="WARNING",
    )
    sink = FileSink(out)
    config = ClusterConfig(settings=settings, log_sink=sink, extra_env=extra_env or {})
    try:
        with EmbeddedCluster(config) as running:
            model = httpx.get(f"{running.http_url}/v1/models", timeout=30).json()["data"][0]["id"]
            yield Target(running.http_url, model, dict(NO_CACHE), dict(running.pids), [f"log: {out}"])
    finally:
        sink.close()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def http_server(command: list[str], port: int, log: Path, env: dict[str, str], ready_path: str, timeout_s: float) -> Iterator[int]:
    """A peer server subprocess, until `ready_path` answers 200; stopped (SIGINT, then SIGKILL) after."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise Skipped(f"{command[0]} exited with {proc.returncode} before it was ready (log: {log})")
                with contextlib.suppress(httpx.HTTPError):  # not listening yet
                    if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise Skipped(f"{command[0]} was not ready within {timeout_s:.0f} s (log: {log})")
                time.sleep(1)
            yield proc.pid
        finally:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def model_dir() -> Path:
    """The converted SmolLM2 safetensors folder every system loads."""
    return Path(prepare_model(resolve_model("smollm2"), default_state_dir()).path)


def cpu_dtype() -> str:
    """The dtype the worker's `auto` takes on this CPU (services/worker/precision.py)."""
    # Imported here: torch loads with it, which the client side of this script does not need.
    from services.worker.precision import cpu_auto_dtype

    return cpu_auto_dtype()


#: The instruction sets that decide which dtype and kernels are fast (the worker's `auto` dtype,
#: oneDNN's and vLLM's kernels): results differ by several times between CPUs with and without them.
CPU_FLAGS_REPORTED = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> dict[str, object]:
    """This machine's CPU as /proc/cpuinfo gives it (model name, family and model numbers, the flags
    of `CPU_FLAGS_REPORTED` it has), so that results from different machines are not compared as
    if alike; empty where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        # Safe: the description is informative only; the benchmark's numbers do not depend on it.
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model name", ""),
        "family": fields.get("cpu family", ""),
        "model": fields.get("model", ""),
        "flags": [flag for flag in CPU_FLAGS_REPORTED if flag in flags],
    }


@contextlib.contextmanager
def transformers_serve(out: Path, dtype: str) -> Iterator[Target]:
    cli = Path(sys.executable).with_name("transformers")
    if not cli.exists():
        raise Skipped("the `transformers` command is not installed next to this Python")
    port = find_free_port()
    path = str(model_dir())
    command = [str(cli), "serve", "--continuous-batching", "--dtype", dtype, "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port), path]
    with http_server(command, port, out, dict(os.environ), "/health", 300) as pid:
        yield Target(f"http://127.0.0.1:{port}", path, {}, {"server": pid}, [f"dtype {dtype}", f"log: {out}"])


def _vllm_env(python: str | None) -> tuple[Path, dict[str, str]]:
    if not python:
        raise Skipped("vLLM is not installed here; pass --vllm-python (see load-tests/install_vllm_cpu.sh)")
    probe = subprocess.run([python, "-c", "import vllm, sys; print(vllm.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise Skipped(f"{python} cannot import vllm: {probe.stderr.strip()[-300:]}")
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    return Path(python), env


@contextlib.contextmanager
def vllm_serve(out: Path, python: str | None, stream_interval: int, dtype: str) -> Iterator[Target]:
    interpreter, env = _vllm_env(python)
    # The converted folder's config still names GGUF quantization, which vLLM refuses; the worker's
    # vllm backend hands it a sibling folder with a cleaned config.json, and so does this peer.
    from services.worker.vllm_engine import vllm_model_folder

    folder = str(vllm_model_folder(model_dir(), default_state_dir()))
    port = find_free_port()
    command = [str(interpreter), "-m", "vllm.entrypoints.cli.main", "serve", folder, "--dtype", dtype,
               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048"]
    if stream_interval > 1:
        command += ["--stream-interval", str(stream_interval)]
    with http_server(command, port, out, env, "/health", 600) as pid:
        notes = [f"dtype {dtype}", f"stream interval {stream_interval}", f"log: {out}"]
        yield Target(f"http://127.0.0.1:{port}", folder, {}, {"server": pid}, notes)


async def sequential_generate(requests: int, max_tokens: int, temperature: float) -> dict[str, Any]:
    """One `generate` after another; every request arrives at 0 and waits for those before it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = cpu_dtype()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()

    class Clock(BaseStreamer):
        """Times every token `generate` emits (its first call carries the prompt)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.calls = 0

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls > 1:
                self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    outcomes: list[Outcome] = []
    arrived = time.perf_counter()
    for index in range(requests):
        messages = [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        clock = Clock()
        with torch.inference_mode():
            output = await asyncio.to_thread(
                model.generate, **ids, max_new_tokens=max_tokens, do_sample=temperature > 0,
                temperature=temperature or None, top_p=1.0, streamer=clock, pad_token_id=tokenizer.eos_token_id,
            )
        new = output[0, ids["input_ids"].shape[1]:]
        times = clock.times
        outcomes.append(Outcome(
            ok=True, ttft_s=times[0] - arrived if times else None, e2e_s=time.perf_counter() - arrived,
            gaps_s=[b - a for a, b in zip(times, times[1:])], usage_tokens=int(new.shape[0]),
        ))
    result = summarise(outcomes, time.perf_counter() - arrived, tokenizer)
    result["notes"] = [f"{requests} requests arriving together, served one after another in this process "
                       f"({dtype}, as the worker's dtype auto on this CPU); TTFT includes the wait behind earlier requests"]
    return result


# ------------------------------------------------------------------------------------------- runs


def _measured(
    target: Target, run: Callable[[], tuple[list[Outcome], float]], tokenizer: Any, *, detail: bool = False
) -> dict[str, Any]:
    before = {name: tree_cpu_seconds(pid) for name, pid in target.pids.items()}
    outcomes, elapsed = run()
    after = {name: tree_cpu_seconds(pid) for name, pid in target.pids.items()}
    result = summarise(outcomes, elapsed, tokenizer, detail=detail)
    if target.pids:
        cpu = {name: round(after[name] - before.get(name, 0.0), 2) for name in after}
        result["cpu_s"] = cpu
        total = sum(cpu.values())
        result["cpu_s_per_1k_tokens"] = round(total / result["output_tokens"] * 1000, 2) if result["output_tokens"] else None
    result["notes"] = target.notes
    return result


def _system(name: str, args: argparse.Namespace, out: Path) -> contextlib.AbstractContextManager[Target]:
    log = out / f"{name}.log"
    joined = {"LGC_WORKER_STREAM_INTERVAL": str(args.stream_interval)}
    if name == "cluster-transformers":
        return cluster("transformers", log, extra_env=joined)
    if name == "cluster-transformers-int8":
        return cluster("transformers", log, extra_env={**joined, "LGC_WORKER_QUANTIZATION": "int8", "LGC_WORKER_DTYPE": "float32"})
    if name == "cluster-simulated":
        return cluster("simulated", log, extra_env=joined)
    if name == "cluster-vllm":
        interpreter, _ = _vllm_env(args.vllm_python)
        # The worker binds vLLM to every core it may use unless the caller set vLLM's variable.
        env = {**joined, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "4"}
        return cluster("vllm", log, extra_env=env, worker_python=str(interpreter))
    if name.startswith("transformers-serve:"):
        dtype = name.split(":", 1)[1]
        return transformers_serve(out / f"transformers-serve-{dtype}.log", dtype)
    if name.startswith("vllm-serve:"):
        dtype = name.split(":", 1)[1]
        return vllm_serve(out / f"vllm-serve-{dtype}.log", args.vllm_python, args.stream_interval, dtype)
    raise ValueError(name)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    load = dict(requests=args.requests, streams=args.streams, max_tokens=args.max_tokens,
                temperature=args.temperature, timeout_s=args.timeout)
    report: dict[str, Any] = {
        "setup": {**load, "stream_interval": args.stream_interval, "warmup_requests": args.warmup_requests, "prompts": len(PROMPTS), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpus": os.cpu_count(), "cpu": cpu_description(), "cpu_dtype_auto": cpu_dtype(), "loadavg_before": os.getloadavg(),
                  "model": "SmolLM2-135M-Instruct", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "systems": {},
    }
    for name in args.systems:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            if name == "sequential-generate":
                result = asyncio.run(sequential_generate(args.sequential_requests, args.max_tokens, args.temperature))
            elif name in ("transformers-serve", "vllm-serve"):
                dtypes = args.tserve_dtypes if name == "transformers-serve" else args.vllm_dtypes
                result = _best_dtype(name, dtypes, args, out, load, tokenizer)
            else:
                result = _measure_system(name, args, out, load, tokenizer, report)
        except Skipped as exc:
            result = {"skipped": str(exc)}
        result = {"label": LABELS[name], "simulated": name == "cluster-simulated", **result,
                  "wall_s": round(time.monotonic() - started, 1), "loadavg_after": os.getloadavg()}
        report["systems"][name] = result
        print(f"[bench] {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    report["comparison"] = _comparison(report["systems"])
    if args.head_to_head:
        args.head_to_head_systems = [best_dtype_of(name, report["systems"]) for name in args.head_to_head_systems]
        print(f"[bench] head to head: {' vs '.join(args.head_to_head_systems)} ...", file=sys.stderr, flush=True)
        report["head_to_head"] = _head_to_head(args, out, load, tokenizer)
        print(f"[bench] head to head: {json.dumps(report['head_to_head']['summary'])}", file=sys.stderr, flush=True)
    return report


def _head_to_head(args: argparse.Namespace, out: Path, load: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Two systems up at once, measured in alternating rounds (`--head-to-head`)."""
    names = args.head_to_head_systems
    (out / "head-to-head").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(_system(name, args, out / "head-to-head")) for name in names]
        for target in targets:
            _warm_up(target, args, load)
        rounds = []
        for index in range(args.head_to_head):
            order = [0, 1] if index % 2 == 0 else [1, 0]
            measured: dict[int, dict[str, Any]] = {}
            for position in order:
                # Both quiet first: a server may keep a core busy for seconds after its own run
                # (vllm serve's engine core used ~1 CPU-second in the 7 s after one here).
                time.sleep(args.head_to_head_pause)
                other = targets[1 - position]
                idle_before = {n: tree_cpu_seconds(p) for n, p in other.pids.items()}
                result = _measured(targets[position], lambda t=targets[position]: asyncio.run(run_load(t, **load)), tokenizer)
                idle_after = {n: tree_cpu_seconds(p) for n, p in other.pids.items()}
                result["other_idle_cpu_s"] = round(sum(idle_after[n] - idle_before.get(n, 0.0) for n in idle_after), 2)
                measured[position] = result
            first, second = measured[0], measured[1]
            rounds.append({
                "order": [names[i] for i in order],
                names[0]: _round_summary(first),
                names[1]: _round_summary(second),
                "ratio": round(first["output_tokens_per_s"] / second["output_tokens_per_s"], 3)
                if first.get("output_tokens_per_s") and second.get("output_tokens_per_s") else None,
            })
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]

    def median_of(name: str, key: str) -> float | None:
        values = [r[name][key] for r in rounds if r[name].get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    summary = {
        "systems": names,
        "rounds": len(rounds),
        "median_ratio_tokens_per_s": round(statistics.median(ratios), 3) if ratios else None,
        "ratios": ratios,
        "rounds_first_faster": sum(1 for r in ratios if r >= 1.0),
        **{f"{name} median tokens/s": median_of(name, "output_tokens_per_s") for name in names},
        **{f"{name} median TTFT p50 ms": median_of(name, "ttft_p50_ms") for name in names},
    }
    return {"summary": summary, "rounds": rounds}


def _run_summary(result: dict[str, Any]) -> dict[str, Any]:
    """One run in a line: what `runs` and the head-to-head rounds list."""
    return {
        "output_tokens_per_s": result.get("output_tokens_per_s"),
        "ttft_p50_ms": result["ttft_ms"]["p50"],
        "tpot_p50_ms": result["tpot_ms"]["p50"],
        "ok": result["ok"],
        "itl_p50_ms": result["itl_ms"]["p50"],
        "e2e_p50_ms": result["e2e_ms"]["p50"],
        "mean_tokens_per_request": result.get("mean_tokens_per_request"),
        "elapsed_s": result.get("elapsed_s"),
    }


def _round_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        **_run_summary(result),
        "cpu_s_per_1k_tokens": result.get("cpu_s_per_1k_tokens"),
        "other_idle_cpu_s": result.get("other_idle_cpu_s"),
    }


def _measure_system(
    name: str, args: argparse.Namespace, out: Path, load: dict[str, Any], tokenizer: Any, report: dict[str, Any]
) -> dict[str, Any]:
    """Start a system, warm it up, measure it `--repeats` times (the median run is the result),
    and run the sweep on it when it is the sweep system."""
    with _system(name, args, out) as target:
        _warm_up(target, args, load)
        runs = [
            _measured(target, lambda: asyncio.run(run_load(target, **load)), tokenizer, detail=args.save_requests)
            for _ in range(args.repeats)
        ]
        if name == args.sweep_system and args.sweep:
            report["sweep"] = _sweep(target, args, tokenizer)
    return _median_run(runs)


def _warm_up(target: Any, args: argparse.Namespace, load: dict[str, Any]) -> None:
    """One unmeasured run of `--warmup-requests` at the measured concurrency, so that each system
    has met the measured shape (a full batch's prefill and steps) before the first measured run."""
    if args.warmup_requests:
        asyncio.run(run_load(target, **{**load, "requests": args.warmup_requests}))


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median output tokens/s (the lower middle one of an even count), with a
    summary of every run under `runs`."""
    ordered = sorted(runs, key=lambda r: r.get("output_tokens_per_s") or 0.0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [_run_summary(r) for r in runs]
    return chosen


def best_dtype_of(name: str, systems: dict[str, Any]) -> str:
    """`name` with a peer server's `:best` replaced by a dtype: the fastest of that server's runs in
    `systems` (its `dtype_runs`), else the dtype the worker's `auto` takes on this CPU. Other names
    are returned as they are."""
    server, _, dtype = name.partition(":")
    if dtype != "best":
        return name
    runs = {d: tps for d, tps in systems.get(server, {}).get("dtype_runs", {}).items() if tps}
    return f"{server}:{max(runs, key=runs.__getitem__) if runs else cpu_dtype()}"


def _best_dtype(
    name: str, dtypes: list[str], args: argparse.Namespace, out: Path, load: dict[str, Any], tokenizer: Any
) -> dict[str, Any]:
    """A peer server (`transformers-serve` or `vllm-serve`) in each of `dtypes`; the fastest
    median, the others summarised (which dtype is fastest depends on the CPU)."""
    results = {}
    for dtype in dtypes:
        try:
            results[dtype] = _measure_system(f"{name}:{dtype}", args, out, load, tokenizer, {})
        except Skipped:
            raise  # not installed: no dtype can run
        except Exception as exc:  # noqa: BLE001 - a dtype this server refuses here is reported, not fatal
            results[dtype] = {"failed": f"{type(exc).__name__}: {str(exc)[-300:]}"}
    if not any("output_tokens_per_s" in r for r in results.values()):
        raise Skipped(f"{name} ran in none of {dtypes}: " + "; ".join(f"{d}: {r.get('failed')}" for d, r in results.items()))
    best = max(results, key=lambda d: results[d].get("output_tokens_per_s") or 0.0)
    chosen = dict(results[best])
    chosen["dtype_runs"] = {d: r.get("output_tokens_per_s") for d, r in results.items()}
    return chosen


def _sweep(target: Target, args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    levels = {}
    for streams in args.sweep:
        load = dict(requests=max(streams, 4), streams=streams, max_tokens=args.max_tokens,
                    temperature=args.temperature, timeout_s=args.timeout)
        print(f"[bench]   sweep {streams} streams ...", file=sys.stderr, flush=True)
        levels[str(streams)] = _measured(target, lambda load=load: asyncio.run(run_load(target, **load)), tokenizer)
    return {"system": args.sweep_system, "levels": levels}


#: Cluster systems that quantize the model (not the peers' precision): outside the best of `_comparison`.
QUANTIZED = ("cluster-transformers-int8",)


def _comparison(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, from what was measured (None where a side was skipped)."""

    def rate(name: str) -> float | None:
        return (systems.get(name) or {}).get("output_tokens_per_s")

    def ttft(name: str) -> float | None:
        return ((systems.get(name) or {}).get("ttft_ms") or {}).get("p50")

    # Quantized systems are left out of the best: they change the text (int8 here gave shorter
    # answers) while the peers run unquantized, so their speed is not the same work's. Their own
    # ratio is reported beside it.
    left_out = ("cluster-simulated", *QUANTIZED)
    real = [n for n in systems if n.startswith("cluster-") and n not in left_out and rate(n)]
    best = max(real, key=lambda n: rate(n) or 0.0, default=None)
    result: dict[str, Any] = {"best_cluster_system": best}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    result["best_cluster_vs_vllm_serve_tokens"] = ratio(rate(best) if best else None, rate("vllm-serve"))
    for name in QUANTIZED:
        result[f"{name}_vs_vllm_serve_tokens"] = ratio(rate(name), rate("vllm-serve"))
    result["best_cluster_ttft_p50_ms"] = ttft(best) if best else None
    result["vllm_serve_ttft_p50_ms"] = ttft("vllm-serve")
    result["transformers_backend_vs_sequential"] = ratio(rate("cluster-transformers"), rate("sequential-generate"))
    result["transformers_backend_vs_transformers_serve"] = ratio(rate("cluster-transformers"), rate("transformers-serve"))
    result["targets"] = {
        "best cluster >= vllm serve tokens/s, TTFT p50 no higher": "best_cluster_vs_vllm_serve_tokens >= 1",
        "transformers backend >= 10x sequential": "transformers_backend_vs_sequential >= 10",
        "transformers backend >= 1.5x transformers serve": "transformers_backend_vs_transformers_serve >= 1.5",
    }
    return result


def write_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = {n: r for n, r in report["systems"].items() if "output_tokens_per_s" in r}
    sweep = (report.get("sweep") or {}).get("levels") or {}
    fig, axes = plt.subplots(1, 3 if sweep else 2, figsize=(18 if sweep else 12, 5.5))
    names = list(ran)
    labels = [ran[n]["label"] for n in names]
    colours = ["#bbbbbb" if ran[n]["simulated"] else "#4477aa" if n.startswith("cluster") else "#ee7733" for n in names]
    rates = [ran[n]["output_tokens_per_s"] for n in names]
    axes[0].barh(labels, rates, color=colours)
    axes[0].set_xlabel("output tokens/s")
    setup = report["setup"]
    axes[0].set_title(f"{setup['streams']} streams x {setup['max_tokens']} tokens, {setup['cpus']} CPUs")
    # The simulated pipeline makes no model tokens and would dwarf the others: cut at 1.3x the
    # fastest real system, with its value written on the bar.
    real = [r for n, r in zip(names, rates) if not ran[n]["simulated"]]
    if real and max(rates) > 1.3 * max(real):
        axes[0].set_xlim(0, 1.3 * max(real))
    for n, rate in zip(names, rates):
        note = f"{rate:.0f}" + (" (simulated: no model)" if ran[n]["simulated"] else "")
        axes[0].annotate(note, (min(rate, axes[0].get_xlim()[1]), LABELS[n]), fontsize=8, ha="right", va="center")
    p50 = [(ran[n]["ttft_ms"]["p50"] or 0) / 1000 for n in names]
    p99 = [(ran[n]["ttft_ms"]["p99"] or 0) / 1000 for n in names]
    ys = range(len(names))
    axes[1].barh([y + 0.2 for y in ys], p50, height=0.4, label="TTFT p50")
    axes[1].barh([y - 0.2 for y in ys], p99, height=0.4, label="TTFT p99")
    axes[1].set_yticks(list(ys), labels)
    axes[1].set_xlabel("time to first token, s (sequential: includes the queue)")
    axes[1].legend()
    if sweep:
        levels = sorted(sweep, key=int)
        ax = axes[2]
        ax.plot([int(c) for c in levels], [sweep[c]["output_tokens_per_s"] for c in levels], "o-", label="tokens/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("output tokens/s")
        twin = ax.twinx()
        twin.plot([int(c) for c in levels], [sweep[c]["itl_ms"]["p50"] or 0 for c in levels], "s--", color="#cc3311",
                  label="ITL p50 (ms)")
        twin.set_ylabel("inter-token p50 (ms)")
        ax.set_title(f"sweep: {report['sweep']['system']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "load-tests" / "out" / "peer-bench")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--sequential-requests", type=int, default=8)
    parser.add_argument("--sweep", default="1,8,32,128,256", help="concurrencies; empty: no sweep")
    parser.add_argument("--sweep-system", default="cluster-transformers")
    parser.add_argument("--tserve-dtypes", default="bfloat16,float32", help="dtypes tried for transformers serve")
    parser.add_argument("--vllm-dtypes", default="bfloat16,float32", help="dtypes tried for vllm serve")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per system; the median is reported")
    parser.add_argument(
        "--warmup-requests", type=int, default=None,
        help="requests of each system's unmeasured warm-up run (default: --streams, one full wave; 0: none)",
    )
    parser.add_argument(
        "--peer-omp-wait-policy", choices=("passive", "active", "inherit"), default="inherit",
        help="OMP_WAIT_POLICY for every system; inherit (default): leave it, so that each runs as it does "
        "by default (the cluster's worker sets passive itself; the peers' OpenMP spins, their fastest on "
        "cores of their own); passive forced on vllm serve cost it 15-20 %% of its tokens/s here",
    )
    parser.add_argument(
        "--stream-interval", type=int, default=1,
        help="tokens per streamed chunk for the cluster (LGC_WORKER_STREAM_INTERVAL) and vllm serve "
        "(--stream-interval); transformers serve has no such option and streams every token",
    )
    parser.add_argument("--vllm-python", default=None, help="a Python with vLLM (vllm-cpu here) installed")
    parser.add_argument("--head-to-head", type=int, default=0, help="rounds of the side-by-side comparison; 0: off")
    parser.add_argument("--head-to-head-pause", type=float, default=10.0, help="seconds of quiet before each run")
    parser.add_argument(
        "--head-to-head-systems", default="cluster-transformers,vllm-serve:best",
        help="the two systems of --head-to-head (a peer server with its dtype, e.g. vllm-serve:float32, or "
        ":best: its fastest dtype in this invocation, else the worker's auto dtype on this CPU)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument(
        "--save-requests", action="store_true",
        help="also report each request's send time, TTFT, end and id (`request_timeline`) for every "
        "system's median run",
    )
    args = parser.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    args.sweep = [int(c) for c in args.sweep.split(",") if c]
    args.head_to_head_systems = [s for s in args.head_to_head_systems.split(",") if s]
    if args.head_to_head and len(args.head_to_head_systems) != 2:
        parser.error("--head-to-head-systems names exactly two systems")
    args.tserve_dtypes = [d for d in args.tserve_dtypes.split(",") if d]
    args.vllm_dtypes = [d for d in args.vllm_dtypes.split(",") if d]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup_requests is None:
        args.warmup_requests = args.streams
    if args.warmup_requests < 0:
        parser.error("--warmup-requests must be 0 or more")
    if args.peer_omp_wait_policy != "inherit":
        # Before torch loads here (sequential-generate) and inherited by every server started. Not
        # the default: until 2026-12-06 the peers were given the worker's passive waiting, which
        # is not how a user runs them and slowed vllm serve by 15-20 % (services/worker/README.md).
        os.environ["OMP_WAIT_POLICY"] = args.peer_omp_wait_policy.upper()
    report = bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "worker_peer_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    write_chart(report, args.out / "worker_peer_bench.png")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
