"""Fault-injection suite: faults under load on an embedded cluster, and a JSON fault report.

One command (`make fault-suite`, or the line below) runs every scenario, each on a fresh embedded
cluster (Tansu, redis-server, gateway, batcher, 2 workers; guardian and scaler off, caches off so
every request reaches a worker), all on loopback:

    .venv/bin/python load-tests/fault_suite.py [--backend simulated|transformers] \\
        [--scenarios worker_kill9_mid_stream batcher_kill9 ...] [--out load-tests/results/fault-report.json]

Per scenario: closed-loop HTTP clients (half streaming, half not) send chat completions through
the gateway; a few seconds in, once streams are mid-flight, the fault is injected; the load keeps
running through the fault and after it. Every request has a deadline (the gateway's
`LGC_GATEWAY_REQUEST_TIMEOUT_S`); the client gives up at deadline + margin and counts the request
as **hung**. A request **ended** when it got a full result (200 with `finish_reason`, a stream with
`finish_reason` and `data: [DONE]`) or an explicit error (an HTTP 4xx/5xx carrying an OpenAI error
object, or an SSE `error` event); anything else (a broken connection, a stream that stops without
an end, an error without an error object) is **lost**. With the simulated backend a full result is
also checked word for word (`tok0 tok1 ...`), so a failover that duplicates or drops text shows up
as `ok_text_mismatch`. After the fault is over (or, for faults that are not repaired, right after it
hits), a prober sends small batches until one fully succeeds: `recovery_s` (until its last answer;
`recovery_probe_sent_s` until it was sent). At the end a fresh batch must all succeed:
`serves_again`. A scenario passes with lost = 0, hung = 0, no text mismatch and serves_again;
explicit errors are allowed and counted by code. `sent` counts the load's requests; probes and the
final batch are reported apart (a lost or hung probe fails the scenario too).

Scenarios:

- `worker_kill9_mid_stream`: SIGKILL of the worker running the most sequences.
- `batcher_kill9`: two batchers in one consumer group from the start (the suite starts the second
  one); SIGKILL of the one holding the most requests; the survivor takes over its partitions.
- `redis_restart`: SIGKILL of redis-server, a new one (empty, no persistence) on the same port.
- `broker_pause_10s`: SIGSTOP of the Tansu broker for 10 s, then SIGCONT: a broker outage with its
  state kept. (Tansu keeps topics in memory only, so a real restart loses every topic and offset.)
- `worker_hang`: SIGSTOP of the worker running the most sequences; it stays frozen (alive, port
  open, no answers) until the scenario ends.
- `broker_restart` (not in the default set): SIGKILL of Tansu and a new empty one on the same port,
  topics re-created; shows what a broker that loses its state does to the cluster.

The report (printed and written to --out) has per scenario: sent, ended_ok, ended_error (by code),
lost, hung, recovery_s, the fault, the backend (the simulated one labelled as such), and totals.
Exit status 0 when every scenario passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import httpx

from shared.launcher.cluster import ClusterConfig, ClusterStartError, EmbeddedCluster
from shared.launcher.embedded_infra import create_cluster_topics
from shared.launcher.infra import ManagedProcess, die_with_parent, find_free_port, start_redis, start_tansu
from shared.launcher.output import FileSink, LockedSink
from shared.launcher.ports import free_port_settings
from shared.launcher.service_process import ServiceProcess, ServiceSpec
from shared.protos import worker_pb2, worker_pb2_grpc
from shared.settings import ClusterSettings

__all__ = ["SCENARIOS", "SuiteConfig", "main", "run_suite"]

DEFAULT_SCENARIOS = ("worker_kill9_mid_stream", "batcher_kill9", "redis_restart", "broker_pause_10s", "worker_hang")
SCENARIOS = (*DEFAULT_SCENARIOS, "broker_restart")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fault-report.json"

Outcome = Literal["ok", "error", "hung", "lost"]
#: Longest a load client pauses on a Retry-After (the load must keep running through the fault).
_MAX_RETRY_AFTER_S = 1.0


# ---------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SuiteConfig:
    """How hard and how long each scenario pushes (defaults per backend in `for_backend`)."""

    backend: Literal["simulated", "transformers"] = "simulated"
    clients: int = 12
    """Closed-loop clients (even ones stream, odd ones do not)."""
    max_tokens: int = 40
    deadline_s: float = 30.0
    """The gateway's request timeout: every request's deadline."""
    margin_s: float = 5.0
    """A request still open at deadline + margin (client side) is counted as hung."""
    fault_at_s: float = 3.0
    """Load runs this long before the fault (then until streams are mid-flight)."""
    after_s: float = 10.0
    """Load keeps running this long after the fault is over."""
    recovery_limit_s: float = 60.0
    """Longest the prober tries before the scenario counts as not recovered."""
    probe_size: int = 4
    final_size: int = 8
    broker_pause_s: float = 10.0
    redis_down_s: float = 1.0
    simulated_tokens_per_s: float = 25.0
    simulated_ttft_ms: float = 150.0
    worker_capacity: int = 8

    @classmethod
    def for_backend(cls, backend: str) -> SuiteConfig:
        if backend == "transformers":
            # The real SmolLM2 on CPU: few clients, short answers, a deadline that fits a batch.
            return cls(backend="transformers", clients=4, max_tokens=8, deadline_s=60.0, margin_s=10.0,
                       fault_at_s=4.0, recovery_limit_s=120.0, probe_size=2, final_size=4)
        return cls()


# -------------------------------------------------------------------------------------- requests


@dataclass
class RequestRecord:
    """One request as the client saw it."""

    kind: Literal["load", "probe", "final"]
    stream: bool
    sent_s: float
    ended_s: float | None = None
    outcome: Outcome = "lost"
    code: str | None = None
    """Error code (OpenAI error object `code`, else its `type`) of an explicit error."""
    http_status: int | None = None
    tokens: int = 0
    text_ok: bool | None = None
    """Simulated backend only: whether a full result is exactly `tok0 tok1 ... tok<n-1>`."""
    detail: str = ""
    first_token: bool = False
    retry_after_s: float | None = None
    """Retry-After of a 429/503 answer, which the load clients honour (as a well-behaved client would)."""


def _error_code(raw: bytes | str) -> str | None:
    """The code of an OpenAI error object (`{"error": {...}}`), or None when it is not one."""
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # Safe: not JSON, hence not an error object; the caller counts it as lost.
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not error.get("message"):
        return None
    return str(error.get("code") or error.get("type") or "unknown")


def _expected_text(tokens: int) -> str:
    return " ".join(f"tok{i}" for i in range(tokens))


class LoadClient:
    """Sends chat completions and classifies how each ended."""

    def __init__(self, base_url: str, model: str, config: SuiteConfig, origin: float) -> None:
        self.url = f"{base_url}/v1/chat/completions"
        self.model = model
        self.config = config
        self.origin = origin
        self.records: list[RequestRecord] = []
        self._n = 0
        limit = config.deadline_s + config.margin_s
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(limit + 10, connect=5.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    def now(self) -> float:
        return time.monotonic() - self.origin

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, kind: Literal["load", "probe", "final"], stream: bool) -> RequestRecord:
        self._n += 1
        record = RequestRecord(kind=kind, stream=stream, sent_s=self.now())
        self.records.append(record)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Fault suite request {self._n}: say something short."}],
            "max_tokens": self.config.max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        try:
            async with asyncio.timeout(self.config.deadline_s + self.config.margin_s):
                await self._exchange(body, record)
        except TimeoutError:
            record.outcome, record.detail = "hung", f"no end within deadline + {self.config.margin_s:.0f} s"
        except httpx.HTTPError as exc:
            # Counted, not raised: a broken connection is a request that ended without an answer.
            record.outcome, record.detail = "lost", f"transport error: {type(exc).__name__}: {exc}"[:300]
        record.ended_s = self.now()
        return record

    async def _exchange(self, body: dict[str, Any], record: RequestRecord) -> None:
        async with self.http.stream("POST", self.url, json=body) as response:
            record.http_status = response.status_code
            if response.status_code != 200:
                raw = await response.aread()
                code = _error_code(raw)
                if code is None:
                    record.outcome = "lost"
                    record.detail = f"HTTP {response.status_code} without an error object: {raw[:200]!r}"
                else:
                    record.outcome, record.code = "error", code
                with contextlib.suppress(ValueError):  # Safe: no usable Retry-After means no pause.
                    record.retry_after_s = float(response.headers.get("retry-after", ""))
                return
            if not body["stream"]:
                self._judge_full(await response.aread(), record)
            else:
                await self._judge_stream(response, record)

    def _judge_full(self, raw: bytes, record: RequestRecord) -> None:
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text, finish = choice["message"]["content"] or "", choice.get("finish_reason")
            record.tokens = int((payload.get("usage") or {}).get("completion_tokens") or 0)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            # Safe: a 200 without a well-formed completion is a request without a full result.
            record.outcome, record.detail = "lost", f"malformed 200 body ({type(exc).__name__}): {raw[:200]!r}"
            return
        self._judge_result(text, finish, record)

    async def _judge_stream(self, response: httpx.Response, record: RequestRecord) -> None:
        parts: list[str] = []
        finish: str | None = None
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            code = _error_code(data)
            if code is not None:
                record.outcome, record.code = "error", code
                continue
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                record.detail = f"unparseable SSE event {data[:100]!r}"
                continue
            if chunk.get("usage"):
                record.tokens = int(chunk["usage"].get("completion_tokens") or 0)
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
                    record.first_token = True
                finish = choice.get("finish_reason") or finish
        if record.outcome == "error":
            if not done:
                record.detail = "error event without a closing [DONE]"
            return
        if not done:
            record.outcome, record.detail = "lost", f"stream ended without [DONE] after {len(parts)} chunks"
            return
        self._judge_result("".join(parts), finish, record)

    def _judge_result(self, text: str, finish: str | None, record: RequestRecord) -> None:
        if finish not in ("stop", "length") or not text:
            record.outcome, record.detail = "lost", f"ended without a full result (finish_reason={finish!r})"
            return
        record.outcome = "ok"
        if self.config.backend == "simulated":
            record.text_ok = text == _expected_text(record.tokens) and record.tokens == self.config.max_tokens
            if not record.text_ok:
                record.detail = f"text mismatch ({record.tokens} tokens): {text[:120]!r}"

    def streams_mid_flight(self) -> int:
        return sum(1 for r in self.records if r.stream and r.ended_s is None and r.first_token)


# --------------------------------------------------------------------------------------- helpers


async def _metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (0 when absent or unreachable)."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            text = (await client.get(url)).text
    except httpx.HTTPError:
        return 0.0  # Safe: a dead or frozen service has nothing in flight that we could use.
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


async def _worker_running(target: str) -> int:
    """Sequences running on a worker (its Info RPC), -1 when it does not answer."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            info = await worker_pb2_grpc.WorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=2.0)
        except grpc.aio.AioRpcError:
            return -1  # Safe: a worker that does not answer is not a candidate victim.
        return info.running + info.waiting


async def _busiest_worker(cluster: EmbeddedCluster) -> tuple[str, ServiceProcess]:
    """The worker with the most sequences (waits briefly until one has some)."""
    services = cluster.services
    targets = cluster.worker_targets
    best: tuple[int, str] = (-1, "")
    for _ in range(50):
        loads = {name: await _worker_running(target) for name, target in targets.items()}
        best = max((n, name) for name, n in loads.items())
        if best[0] > 0:
            break
        await asyncio.sleep(0.1)
    return best[1], services[best[1]]


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # Safe: it is gone already, which is the aim.
        os.kill(pid, sig)


@dataclass
class FaultContext:
    """What a fault needs: the cluster, the suite's own extra processes, and the load's clock."""

    cluster: EmbeddedCluster
    config: SuiteConfig
    client: LoadClient
    log_dir: Path
    notes: list[str] = field(default_factory=list)
    extra_services: list[ServiceProcess] = field(default_factory=list)
    extra_infra: list[ManagedProcess] = field(default_factory=list)
    frozen: list[int] = field(default_factory=list)
    """Pids stopped with SIGSTOP, to be continued before the cluster stops."""
    fault_at: float | None = None
    repaired_at: float | None = None

    def note(self, text: str) -> None:
        self.notes.append(f"t={self.client.now():.1f}s {text}")


# ---------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One scenario: an optional preparation after the cluster starts, and the fault itself.
    `inject` returns once the fault is over (repaired, or for lasting faults once it has hit)."""

    name: str
    description: str
    inject: Callable[[FaultContext], Awaitable[None]]
    prepare: Callable[[FaultContext], Awaitable[None]] | None = None


async def _kill_worker(ctx: FaultContext) -> None:
    name, victim = await _busiest_worker(ctx.cluster)
    ctx.fault_at = ctx.client.now()
    _signal(victim.pid, signal.SIGKILL)
    ctx.note(f"SIGKILL {name} (pid {victim.pid}) with {ctx.client.streams_mid_flight()} client streams mid-flight")
    ctx.repaired_at = ctx.fault_at  # not repaired: the other worker must carry the load


async def _hang_worker(ctx: FaultContext) -> None:
    name, victim = await _busiest_worker(ctx.cluster)
    ctx.fault_at = ctx.client.now()
    _signal(victim.pid, signal.SIGSTOP)
    ctx.frozen.append(victim.pid)
    ctx.note(f"SIGSTOP {name} (pid {victim.pid}) with {ctx.client.streams_mid_flight()} client streams mid-flight; "
             "it stays frozen until the scenario ends")
    ctx.repaired_at = ctx.fault_at  # never repaired during the scenario


async def _second_batcher(ctx: FaultContext) -> None:
    """Start a second batcher in the same consumer group, as an operator running two would."""
    first = ctx.cluster.services["batcher"]
    port = find_free_port()
    spec = ServiceSpec(
        name="batcher-1",
        kind="batcher",
        argv=first.spec.argv,
        env={**first.spec.env, "LGC_INSTANCE_ID": "batcher-1", "LGC_BATCHER_METRICS_PORT": str(port)},
        ready_url=f"http://127.0.0.1:{port}/ready",
        ready_timeout_s=60,
        metrics_url=f"http://127.0.0.1:{port}/metrics",
    )
    sink = LockedSink(FileSink(ctx.log_dir / "batcher-1.log"))
    service = ServiceProcess(spec, sink, lambda _s: None)
    ctx.extra_services.append(service)
    deadline = time.monotonic() + spec.ready_timeout_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not service.alive():
                raise RuntimeError(f"the second batcher exited: {service.tail()[-5:]}")
            with contextlib.suppress(httpx.HTTPError):  # Safe: not listening yet; asked again.
                if (await http.get(spec.ready_url)).status_code == 200:
                    break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError("the second batcher never became ready")
    # Let the group settle into two members before the load starts.
    await asyncio.sleep(ctx.cluster.settings.kafka_session_timeout_ms / 1000 + 1)


async def _kill_batcher(ctx: FaultContext) -> None:
    candidates = {"batcher": ctx.cluster.services["batcher"], **{s.name: s for s in ctx.extra_services}}
    loads: dict[str, float] = {}
    for _ in range(50):
        loads = {
            n: await _metric(s.spec.metrics_url or "", "lgc_batcher_inflight_requests") for n, s in candidates.items()
        }
        if max(loads.values()) > 0:
            break
        await asyncio.sleep(0.1)
    name = max(loads, key=lambda n: loads[n])
    victim = candidates[name]
    ctx.fault_at = ctx.client.now()
    victim.stopping = True  # the suite kills it on purpose; not a cluster failure
    _signal(victim.pid, signal.SIGKILL)
    ctx.note(f"SIGKILL {name} (pid {victim.pid}) holding {loads[name]:.0f} requests "
             f"(in flight by batcher: {loads}); the other batcher takes over")
    ctx.repaired_at = ctx.fault_at


def _infra(ctx: FaultContext, name: str) -> tuple[int, str]:
    """Pid and address of the live embedded `kafka` or `redis` process."""
    for proc in reversed(ctx.extra_infra):
        if proc.name == name and proc.alive():
            return proc.pid, proc.address
    for infra in ctx.cluster.infra:
        if infra.name == name:
            return infra.pid, infra.process.address
    raise RuntimeError(f"no embedded {name} (external infrastructure is not supported by the suite)")


async def _start_replacement(ctx: FaultContext, start, host: str, port: int, name: str):
    """A new infrastructure process on the same port (log in `<name>-restarted.log`), stopped with
    the scenario. Started on a thread so the load's event loop keeps running while it comes up."""
    with (ctx.log_dir / f"{name}-restarted.log").open("wb") as log:
        proc = await asyncio.to_thread(start, host, port, stdout=log.fileno(), preexec_fn=die_with_parent())
    ctx.extra_infra.append(proc)
    return proc


async def _restart_redis(ctx: FaultContext) -> None:
    pid, _ = _infra(ctx, "redis")
    settings = ctx.cluster.settings
    ctx.fault_at = ctx.client.now()
    _signal(pid, signal.SIGKILL)
    ctx.note(f"SIGKILL redis-server (pid {pid})")
    await asyncio.sleep(ctx.config.redis_down_s)
    proc = await _start_replacement(ctx, start_redis, settings.embedded_redis_host, settings.embedded_redis_port, "redis")
    ctx.repaired_at = ctx.client.now()
    ctx.note(f"new redis-server (pid {proc.pid}, empty: no persistence) on the same port")


async def _pause_broker(ctx: FaultContext) -> None:
    pid, _ = _infra(ctx, "kafka")
    ctx.fault_at = ctx.client.now()
    _signal(pid, signal.SIGSTOP)
    ctx.frozen.append(pid)
    ctx.note(f"SIGSTOP Tansu (pid {pid}) for {ctx.config.broker_pause_s:.0f} s")
    await asyncio.sleep(ctx.config.broker_pause_s)
    _signal(pid, signal.SIGCONT)
    ctx.frozen.remove(pid)
    ctx.repaired_at = ctx.client.now()
    ctx.note("SIGCONT Tansu")


async def _restart_broker(ctx: FaultContext) -> None:
    pid, _ = _infra(ctx, "kafka")
    settings = ctx.cluster.settings
    ctx.fault_at = ctx.client.now()
    _signal(pid, signal.SIGKILL)
    ctx.note(f"SIGKILL Tansu (pid {pid}): every topic, record and committed offset is gone")
    await asyncio.sleep(1.0)
    proc = await _start_replacement(ctx, start_tansu, settings.embedded_kafka_host, settings.embedded_kafka_port, "tansu")
    created = await asyncio.to_thread(create_cluster_topics, ctx.cluster.client_settings, 30.0)
    ctx.repaired_at = ctx.client.now()
    ctx.note(f"new empty Tansu (pid {proc.pid}); cluster topics re-created ({len(created)}); "
             "per-instance reply topics are not")


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("worker_kill9_mid_stream", "kill -9 of the busiest of 2 workers while streams are mid-flight; not "
              "restarted", _kill_worker),
        Fault("batcher_kill9", "kill -9 of the busier of 2 batchers (one consumer group; the second started by the "
              "suite) while it holds requests; not restarted", _kill_batcher, prepare=_second_batcher),
        Fault("redis_restart", "kill -9 of redis-server, a new empty one on the same port after 1 s", _restart_redis),
        Fault("broker_pause_10s", "Tansu broker frozen with SIGSTOP for 10 s, then SIGCONT (an outage with its "
              "state kept: Tansu stores topics in memory only, so a real restart would lose them)", _pause_broker),
        Fault("worker_hang", "SIGSTOP of the busiest of 2 workers while streams are mid-flight: it hangs without "
              "dying (process alive, port open, no answers) for the rest of the scenario", _hang_worker),
        Fault("broker_restart", "kill -9 of the Tansu broker and a new empty one on the same port, cluster topics "
              "re-created (Tansu memory storage: topics, records and offsets are lost)", _restart_broker),
    )
}


# -------------------------------------------------------------------------------------- scenario


def _cluster_for(config: SuiteConfig, state_dir: Path, log: FileSink) -> EmbeddedCluster:
    settings = free_port_settings(
        workers=2,
        worker_backend=config.backend,
        state_dir=state_dir,
        log_format="text",
        start_guardian=False,
        start_scaler=False,
        kafka_session_timeout_ms=3_000,
        stop_grace_s=10,
    )
    service_env = {  # read by the services themselves
        "LGC_GATEWAY_REQUEST_TIMEOUT_S": str(config.deadline_s),
        "LGC_GATEWAY_CACHE_ENABLED": "false",
        "LGC_GATEWAY_SEMANTIC_CACHE_ENABLED": "false",
        "LGC_WORKER_MAX_BATCH_SIZE": str(config.worker_capacity),
        "LGC_SIMULATED_TOKENS_PER_S": str(config.simulated_tokens_per_s),
        "LGC_SIMULATED_TTFT_MS": str(config.simulated_ttft_ms),
        "LGC_METRICS_INTERVAL_S": "5",
    }
    return EmbeddedCluster(ClusterConfig(settings=settings, log_sink=log, extra_env=service_env))


async def _until_serving(client: LoadClient, limit_s: float) -> None:
    """Block until one request succeeds end to end (the cluster is warm)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if (await client.send("probe", stream=False)).outcome == "ok":
            client.records.clear()
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the cluster never served a request before the fault")


async def _probe_recovery(client: LoadClient, config: SuiteConfig, since: float) -> tuple[float, float] | None:
    """From `since`: when the first probe batch that fully succeeded was sent, and when its last
    answer came (seconds); None if none did within the limit."""
    while client.now() - since < config.recovery_limit_s:
        sent = client.now()
        batch = await asyncio.gather(*(client.send("probe", stream=i % 2 == 0) for i in range(config.probe_size)))
        if all(r.outcome == "ok" for r in batch):
            return round(max(0.0, sent - since), 2), round(client.now() - since, 2)
        await asyncio.sleep(0.5)
    return None


async def _drive(fault: Fault, ctx: FaultContext) -> dict[str, Any]:
    client, config = ctx.client, ctx.config
    stop_load = asyncio.Event()

    async def loop(index: int) -> None:
        while not stop_load.is_set():
            record = await client.send("load", stream=index % 2 == 0)
            if record.retry_after_s is not None:  # a 429/503 asked to come back later
                await asyncio.sleep(min(record.retry_after_s, _MAX_RETRY_AFTER_S))

    load = [asyncio.create_task(loop(i)) for i in range(config.clients)]
    await asyncio.sleep(config.fault_at_s)
    for _ in range(100):  # wait (bounded) until streams are mid-flight
        if client.streams_mid_flight() >= 2:
            break
        await asyncio.sleep(0.05)
    await fault.inject(ctx)
    assert ctx.repaired_at is not None
    recovery = asyncio.create_task(_probe_recovery(client, config, ctx.repaired_at))
    await asyncio.sleep(config.after_s)
    stop_load.set()
    await asyncio.gather(*load)  # each request is bounded by deadline + margin
    recovered = await recovery
    final = await asyncio.gather(*(client.send("final", stream=i % 2 == 0) for i in range(config.final_size)))
    return {
        "recovery_s": None if recovered is None else recovered[1],
        "recovery_probe_sent_s": None if recovered is None else recovered[0],
        "serves_again": all(r.outcome == "ok" for r in final),
    }


def _latency(records: list[RequestRecord]) -> dict[str, float | None]:
    """End-to-end seconds of requests (p50 and max): how much a fault delayed the ones it did not fail."""
    took = sorted(r.ended_s - r.sent_s for r in records if r.ended_s is not None)
    if not took:
        return {"p50": None, "max": None}
    return {"p50": round(took[len(took) // 2], 2), "max": round(took[-1], 2)}


def _summary(fault: Fault, ctx: FaultContext, driven: dict[str, Any], elapsed: float) -> dict[str, Any]:
    records = ctx.client.records
    load = [r for r in records if r.kind == "load"]
    by_outcome = Counter(r.outcome for r in load)
    errors = Counter(f"{r.code} (HTTP {r.http_status})" if not r.stream or r.http_status != 200 else f"{r.code} (SSE)"
                     for r in load if r.outcome == "error")
    mismatch = [r for r in records if r.outcome == "ok" and r.text_ok is False]  # probes and final batch too
    probes = [r for r in records if r.kind == "probe"]
    probe_outcomes = Counter(r.outcome for r in probes)
    lost, hung = by_outcome["lost"], by_outcome["hung"]
    examples = [f"{r.kind} {'stream' if r.stream else 'unary'} @{r.sent_s:.1f}s {r.outcome}: {r.detail}"
                for r in records if r.outcome in ("lost", "hung") or r.text_ok is False][:8]
    passed = (
        lost == hung == probe_outcomes["lost"] == probe_outcomes["hung"] == 0
        and not mismatch
        and driven["serves_again"]
        and driven["recovery_s"] is not None
    )
    return {
        "scenario": fault.name,
        "fault": fault.description,
        "passed": passed,
        "sent": len(load),
        "ended_ok": by_outcome["ok"],
        "ended_error": sum(errors.values()),
        "errors_by_code": dict(sorted(errors.items())),
        "lost": lost,
        "hung": hung,
        "ok_text_mismatch": len(mismatch),
        "ok_latency_s": _latency([r for r in load if r.outcome == "ok"]),
        "streaming_sent": sum(1 for r in load if r.stream),
        "fault_at_s": None if ctx.fault_at is None else round(ctx.fault_at, 2),
        "repaired_at_s": None if ctx.repaired_at is None else round(ctx.repaired_at, 2),
        "recovery_s": driven["recovery_s"],
        "recovery_probe_sent_s": driven["recovery_probe_sent_s"],
        "recovery_measured_from": "repair" if ctx.repaired_at != ctx.fault_at else "fault (not repaired)",
        "serves_again": driven["serves_again"],
        "probes": {"sent": len(probes), **{k: probe_outcomes[k] for k in ("ok", "error", "lost", "hung")}},
        "final_batch": {"sent": ctx.config.final_size,
                        "ok": sum(1 for r in records if r.kind == "final" and r.outcome == "ok")},
        "timeline": ctx.notes,
        "examples": examples,
        "elapsed_s": round(elapsed, 1),
    }


async def _scenario(
    fault: Fault, config: SuiteConfig, cluster: EmbeddedCluster, log_dir: Path, infra: list[ManagedProcess]
) -> dict[str, Any]:
    """Prepare, warm up, drive the load through the fault; `infra` receives the infrastructure
    processes the fault started (stopped by the caller after the cluster, which still needs them)."""
    model = httpx.get(f"{cluster.http_url}/v1/models", timeout=10).json()["data"][0]["id"]
    client = LoadClient(cluster.http_url, model, config, origin=time.monotonic())
    ctx = FaultContext(cluster, config, client, log_dir, extra_infra=infra)
    started = time.monotonic()
    try:
        if fault.prepare is not None:
            await fault.prepare(ctx)
        await _until_serving(client, limit_s=120.0)
        client.origin = time.monotonic()
        driven = await _drive(fault, ctx)
        return _summary(fault, ctx, driven, time.monotonic() - started)
    finally:
        await client.close()
        for pid in ctx.frozen:  # a stopped process cannot handle SIGTERM: let it go first
            _signal(pid, signal.SIGCONT)
        for service in ctx.extra_services:
            service.kill()
            service.exited.wait(10)


def _share_model_cache(state_dir: Path) -> None:
    """Point the scenario's model cache at the user's (`<LGC_STATE_DIR>/models`), so that the real
    model is converted once, not once per scenario (about 30 s each)."""
    shared_models = ClusterSettings().state_dir / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    link = state_dir / "models"
    if not link.exists():
        link.symlink_to(shared_models, target_is_directory=True)


def _start_cluster(config: SuiteConfig, log_dir: Path, sink: FileSink, pids: list[int]) -> EmbeddedCluster:
    """A started cluster on free ports; a few tries, since a port found free can be taken by another
    process before a service binds it (a busy shared machine)."""
    if config.backend == "transformers":
        _share_model_cache(log_dir / "state")
    for attempt in range(1, 4):
        cluster = _cluster_for(config, log_dir / "state", sink)
        try:
            cluster.start()
        except ClusterStartError as exc:
            # Safe: start() stopped everything it had started; a fresh set of ports is tried.
            pids += cluster.pids.values()
            sink(f"[fault-suite] cluster start {attempt} failed: {exc}")
            if attempt == 3:
                raise
            continue
        pids += cluster.pids.values()
        return cluster
    raise AssertionError("unreachable")


def run_scenario(name: str, config: SuiteConfig, work_dir: Path) -> tuple[dict[str, Any], list[int]]:
    """One scenario on a fresh cluster; returns its summary and every pid it started."""
    fault = FAULTS[name]
    log_dir = work_dir / name
    log_dir.mkdir(parents=True, exist_ok=True)
    sink = FileSink(log_dir / "cluster.log")
    pids: list[int] = []
    print(f"[fault-suite] {name}: starting a cluster ({config.backend} backend); logs in {log_dir}", file=sys.stderr)
    t0 = time.monotonic()
    cluster: EmbeddedCluster | None = None
    infra: list[ManagedProcess] = []
    try:
        cluster = _start_cluster(config, log_dir, sink, pids)
        print(f"[fault-suite] {name}: cluster ready in {time.monotonic() - t0:.1f} s; injecting under load",
              file=sys.stderr)
        summary = asyncio.run(_scenario(fault, config, cluster, log_dir, infra))
        pids += cluster.pids.values()
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not stop the suite
        # Safe: reported as a failed scenario with the cause; the cluster is stopped below.
        summary = {"scenario": name, "fault": fault.description, "passed": False,
                   "crashed": f"{type(exc).__name__}: {exc}"}
    finally:
        if cluster is not None:
            pids += cluster.pids.values()
            cluster.stop()
        for proc in infra:  # after the services, which use it until they have stopped
            pids.append(proc.pid)
            proc.stop(grace_s=5.0)
        sink.close()
    summary["cluster_start_and_run_s"] = round(time.monotonic() - t0, 1)
    print(f"[fault-suite] {name}: {'PASS' if summary['passed'] else 'FAIL'} "
          f"{ {k: summary.get(k) for k in ('sent', 'ended_ok', 'ended_error', 'lost', 'hung', 'recovery_s')} }",
          file=sys.stderr)
    return summary, pids


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in set(pids):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue  # Safe: gone, as it should be.
        except PermissionError:
            continue  # Safe: the pid was reused by someone else's process; ours is gone.
        with contextlib.suppress(OSError):  # a zombie of ours counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                continue
        alive.append(pid)
    return alive


def run_suite(names: list[str], config: SuiteConfig, work_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    pids: list[int] = []
    for name in names:
        summary, started_pids = run_scenario(name, config, work_dir)
        results.append(summary)
        pids += started_pids
    time.sleep(1.0)
    leftovers = _alive(pids)
    keys = ("sent", "ended_ok", "ended_error", "lost", "hung", "ok_text_mismatch")
    totals = {k: sum(int(r.get(k) or 0) for r in results) for k in keys}
    return {
        "suite": "fault-injection",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": config.backend,
        "backend_label": "SIMULATED worker backend (no model: tokens `tok0 tok1 ...` at a fixed rate)"
        if config.backend == "simulated" else "transformers backend, real SmolLM2-135M-Instruct on CPU",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": dataclasses.asdict(config),
        "cluster": "embedded (Tansu + redis-server + gateway + batcher + 2 workers; guardian and scaler off; "
                   "exact and semantic caches off), loopback only, a fresh cluster per scenario",
        "definitions": {
            "ended_ok": "full result: 200 with finish_reason (streams: and data: [DONE])",
            "ended_error": "explicit error: HTTP 4xx/5xx with an OpenAI error object, or an SSE error event",
            "lost": "sent and neither ended_ok nor ended_error (broken connection, truncated stream, 200 without a "
                    "result, error without an error object); sent = ended_ok + ended_error + lost + hung",
            "hung": "still open at deadline + margin (client side)",
            "probes": "the recovery prober's requests, counted the same way; a lost or hung probe fails the scenario",
            "recovery_s": "from the repair (or, for faults that are not repaired, from the fault) until the last "
                          "answer of the first probe batch that wholly succeeded (probe batches go back to back, 0.5 s apart; "
                          "this includes one generation's duration)",
            "recovery_probe_sent_s": "the same, until that probe batch was sent (0: new requests sent at once were "
                                     "all served, if late)",
            "serves_again": "a fresh batch after the load all succeeded, without any manual restart",
        },
        "scenarios": results,
        "totals": {**totals, "scenarios": len(results), "passed": sum(1 for r in results if r["passed"])},
        "passed": all(r["passed"] for r in results) and not leftovers,
        "leftover_processes": leftovers,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("simulated", "transformers"), default="simulated")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(DEFAULT_SCENARIOS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--logs", type=Path, default=None, help="folder for cluster logs (default: a temp dir)")
    args = parser.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: each cluster's stop() runs and no child outlives the suite.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work_dir = args.logs or Path(tempfile.mkdtemp(prefix="lgc-fault-suite-"))
    report = run_suite(args.scenarios, SuiteConfig.for_backend(args.backend), work_dir)
    report["logs"] = str(work_dir)
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"[fault-suite] report written to {args.out}: {'PASS' if report['passed'] else 'FAIL'}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
