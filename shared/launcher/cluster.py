"""`EmbeddedCluster`: a whole LLM Guardian Cluster on one machine, each service its own OS process.

Used by `lgc up` and by the integration tests::

    settings = free_port_settings(workers=2, worker_backend="simulated", state_dir=tmp_path)
    with EmbeddedCluster(ClusterConfig(settings=settings, log_sink=lines.append)) as cluster:
        httpx.post(cluster.http_url + "/v1/chat/completions", ...)

`start()` starts the embedded infrastructure (unless external), creates the topics, starts the
gateway, the batcher, N workers, the guardian and the scaler, and returns once every one answers
``GET /ready`` with 200. `stop()` stops them front to back (gateway, then batcher, then workers,
guardian and scaler) with SIGTERM so each can drain, kills whatever is left after the grace period
(whole process groups), then stops the infrastructure. Whatever happens (a failed start, an
exception in the caller, SIGTERM or Ctrl-C in `lgc up`, a killed parent) no child outlives it.

The class is synchronous and thread-safe; `wait()` blocks on a change signal, never polls.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis

from shared.launcher.change_signal import ChangeSignal
from shared.launcher.embedded_infra import (
    InfraProcess,
    create_cluster_topics,
    infra_port_claims,
    start_embedded_infra,
)
from shared.launcher.output import LockedSink, LogSink, stdout_sink
from shared.launcher.ports import PortClaim, PortInUseError, check_ports_free
from shared.launcher.readiness import ServiceStartError, StartAborted, wait_until_ready
from shared.launcher.service_process import ServiceProcess, ServiceSpec, command_for
from shared.launcher.settings import LauncherSettings
from shared.launcher.worker_reconciler import WorkerReconciler
from shared.settings import ClusterSettings

__all__ = [
    "SERVICE_KINDS",
    "ClusterConfig",
    "ClusterEndpoints",
    "ClusterStartError",
    "EmbeddedCluster",
    "ServiceKind",
    "StartAborted",
    "embedded_worker_threads",
]

ServiceKind = Literal["gateway", "batcher", "worker", "guardian", "scaler"]
#: Every service kind, in start order.
SERVICE_KINDS: tuple[ServiceKind, ...] = ("gateway", "batcher", "worker", "guardian", "scaler")

#: Stop stages: the gateway first (it finishes the requests it holds, which needs the batcher and
#: workers), then the batcher (it finishes its in-flight batches on the workers), then the rest.
_STOP_STAGE: dict[str, int] = {"gateway": 0, "batcher": 1, "worker": 2, "guardian": 2, "scaler": 2}
#: How long a killed process group may take to vanish, and an infra process to stop.
_KILL_WAIT_S = 5.0
_INFRA_GRACE_S = 5.0


@dataclass(frozen=True)
class ClusterConfig:
    """How to run a cluster: the settings plus what only a caller in Python can give."""

    settings: LauncherSettings = field(default_factory=LauncherSettings)
    """Ports, workers, backend, model, state dir, log format, guardian/scaler switches, timeouts."""
    log_sink: LogSink = stdout_sink
    """Receives every output line of every child, prefixed `[name] `, plus the launcher's `[lgc] `
    lines (default: stdout). E.g. `lines.append`, or a `FileSink`."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Environment added to every service (after the settings, before per-process values)."""
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Command line per service kind instead of `python -m services.<kind>` (tests use fakes)."""
    python: str = sys.executable
    """Interpreter that runs the services."""
    tail_lines: int = 50
    """Output lines kept per process for error reports."""


@dataclass(frozen=True)
class ClusterEndpoints:
    """Where to reach a started cluster."""

    http_url: str
    """Gateway's OpenAI-compatible HTTP API, e.g. `http://127.0.0.1:8000`."""
    grpc_target: str
    """Gateway's public gRPC target, e.g. `127.0.0.1:50051`."""
    kafka_bootstrap: str
    """Kafka bootstrap the services use."""
    redis_url: str
    """Redis URL the services use."""
    qdrant: str
    """Qdrant URL, or `local mode (<path>)`."""
    guardian_url: str | None
    """Guardian's HTTP base URL (None without a guardian)."""
    guard_check_url: str | None
    """`POST` URL of the guardian's synchronous check."""
    metrics_urls: Mapping[str, str]
    """Prometheus endpoint per process name (`gateway`, `batcher`, `worker-0`, ...)."""
    worker_targets: Mapping[str, str]
    """gRPC target per worker process name."""


class ClusterStartError(RuntimeError):
    """The cluster could not start (busy port, infrastructure, a service that died or timed out).
    Everything that had been started is stopped again before this is raised."""


def _connect_host(host: str) -> str:
    """Where to connect to reach a service listening on `host` (wildcards mean loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _env_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class EmbeddedCluster:
    """A local cluster of OS processes; see the module docstring."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()
        self.settings = self.config.settings
        self._sink = LockedSink(self.config.log_sink)
        self._changes = ChangeSignal()
        self._lock = threading.RLock()
        self._services: dict[str, ServiceProcess] = {}
        self._infra: list[InfraProcess] = []
        self._failed: list[ServiceProcess] = []
        self._next_worker = 0
        self._state: Literal["new", "starting", "running", "stopping", "stopped"] = "new"
        self._stop_requested = False
        self._force = False
        self._reconciler: WorkerReconciler | None = None
        self.client_settings = self._client_settings()
        self.endpoints = self._endpoints()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedCluster:
        """Start everything and wait until every service is ready.

        Raises ClusterStartError (or StartAborted after `request_stop()`); either way everything
        started so far has been stopped again.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"start() on a cluster that is {self._state}")
            self._state = "starting"
        atexit.register(self.stop)
        try:
            self._start()
        except (StartAborted, ClusterStartError):
            self._abandon_start("stopped")
            raise
        except (RuntimeError, OSError) as exc:
            # A busy port, infrastructure that did not come up, a service that died or timed out,
            # a command that does not exist: one error type for the caller, with the cause.
            self._abandon_start("failed")
            raise ClusterStartError(str(exc)) from exc
        except BaseException:
            # Safe: Ctrl-C or any other error also tears the cluster down before propagating.
            self._abandon_start("interrupted")
            raise
        with self._lock:
            if self._state == "starting":
                self._state = "running"
        if self.settings.scaler_actuator == "local" and self.settings.start_scaler:
            self._start_reconciler()
        return self

    def _start_reconciler(self) -> None:
        """The scaler's `local` actuator: converge the workers on its decisions (see
        shared/launcher/worker_reconciler.py)."""
        reconciler = WorkerReconciler(
            self,
            self.settings.effective_redis_url,
            prefix=self.settings.topic_prefix,
            refresh_s=self.settings.scaler_reconcile_refresh_s,
            say=self.say,
        )
        try:
            reconciler.start()
        except (redis.RedisError, OSError) as exc:
            # Safe: the cluster is up; without the reconciler the scaler's decisions are advice.
            self.say(f"worker reconciler did not start ({exc}); scaling decisions will not be applied")
            return
        self._reconciler = reconciler

    def _start(self) -> None:
        settings = self.settings
        specs = [spec for kind in SERVICE_KINDS for spec in self._specs_of(kind)]
        check_ports_free(infra_port_claims(settings) + [claim for spec in specs for claim in self._claims(spec)])
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)

        t0 = time.monotonic()
        self._infra = start_embedded_infra(settings, self._sink, tail_lines=self.config.tail_lines)
        for infra in self._infra:
            self.say(f"embedded {infra.name} listening on {infra.process.address} (pid {infra.pid})")
        created = create_cluster_topics(
            self.client_settings, settings.topics_timeout_s, pause_fn=self._pause_unless_stopped
        )
        self.say(
            f"topics ready on {self.endpoints.kafka_bootstrap} ({len(created)} created) "
            f"after {time.monotonic() - t0:.1f} s"
        )

        workers = tuple(spec.name for spec in specs if spec.kind == "worker")
        for spec in specs:
            if spec.kind in ("gateway", "batcher"):
                # Their readiness may well depend on a worker being up; the first worker start
                # converts the model, which can take minutes.
                spec = dataclasses.replace(spec, timeout_after=workers)
            self._spawn(spec)
        wait_until_ready(list(self._services.values()), self._changes, self._stop_was_requested, self._report_ready)
        self.say(f"cluster ready after {time.monotonic() - t0:.1f} s")

    def _abandon_start(self, how: str) -> None:
        self.say(f"start-up {how}; stopping what was started")
        self.stop()

    def stop(self) -> None:
        """Stop every service (front to back, SIGTERM, grace period, SIGKILL of whole process
        groups), then the embedded infrastructure. Idempotent; safe after a failed start."""
        with self._lock:
            if self._state in ("stopping", "stopped"):
                return
            self._state = "stopping"
        self._changes.notify()
        try:
            if self._reconciler is not None:
                # First, so that no worker is started or stopped while the cluster goes down.
                self._reconciler.stop(timeout_s=self.settings.stop_grace_s)
            services = list(self._services.values())
            for stage in sorted({s.spec.stop_stage for s in services}):
                self._stop_group([s for s in services if s.spec.stop_stage == stage])
            for infra in reversed(self._infra):
                infra.stop(grace_s=_INFRA_GRACE_S)
        finally:
            with self._lock:
                self._state = "stopped"
            atexit.unregister(self.stop)
            self._changes.notify()
        self.say("stopped")

    def request_stop(self) -> None:
        """Ask a running or starting cluster to stop: `wait()` returns, a running `start()` raises
        StartAborted. Safe from signal handlers and other threads. A second request while stopping
        cuts the grace period short (SIGKILL at once)."""
        if self._stop_requested:
            self._force = True
        self._stop_requested = True
        self._changes.notify()

    def wait(self, timeout_s: float | None = None) -> ServiceProcess | None:
        """Block until a service exits unexpectedly (returned), `request_stop()` is called or the
        timeout passes (None for both)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            seen = self._changes.snapshot()
            with self._lock:
                if self._failed:
                    return self._failed[0]
            if self._stop_requested or self._state in ("stopping", "stopped"):
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._changes.wait(seen, remaining)

    # ------------------------------------------------------------------ workers

    def add_worker(self) -> ServiceProcess:
        """Start one more worker (next index and ports) and wait until it is ready."""
        with self._lock:
            if self._state != "running":
                raise RuntimeError(f"add_worker() on a cluster that is {self._state}")
        spec = self._worker_spec(self._take_worker_index())
        try:
            check_ports_free(self._claims(spec))
            service = self._spawn(spec)
            wait_until_ready([service], self._changes, self._stop_was_requested, self._report_ready)
        except (PortInUseError, ServiceStartError) as exc:
            # Safe: the new worker alone is stopped; the rest of the cluster keeps running.
            if spec.name in self._services:
                self.stop_worker(spec.name)
            raise ClusterStartError(str(exc)) from exc
        return service

    def worker_names(self) -> list[str]:
        """Names of the running workers not being stopped."""
        with self._lock:
            return [n for n, s in self._services.items() if s.spec.kind == "worker" and not s.stopping]

    @property
    def reconciler(self) -> WorkerReconciler | None:
        """The worker reconciler (only with the scaler's `local` actuator)."""
        return self._reconciler

    def stop_worker(self, name: str) -> int | None:
        """Stop one worker (SIGTERM, grace period, SIGKILL); returns its exit code."""
        with self._lock:
            service = self._services.get(name)
            if service is None or service.spec.kind != "worker":
                raise KeyError(f"no worker named {name!r}")
            service.stopping = True
        self._stop_group([service])
        with self._lock:
            self._services.pop(name, None)
        return service.returncode

    # ------------------------------------------------------------------ what it exposes

    @property
    def services(self) -> dict[str, ServiceProcess]:
        """The service processes by name (a copy)."""
        with self._lock:
            return dict(self._services)

    @property
    def infra(self) -> list[InfraProcess]:
        """The embedded infrastructure processes (empty when all of it is external)."""
        return list(self._infra)

    @property
    def pids(self) -> dict[str, int]:
        """Pid of every process this cluster started, infrastructure included."""
        pids = {i.name: i.pid for i in self._infra}
        pids.update({name: s.pid for name, s in self.services.items()})
        return pids

    @property
    def failed(self) -> list[ServiceProcess]:
        """Services that exited without being asked to."""
        with self._lock:
            return list(self._failed)

    @property
    def http_url(self) -> str:
        return self.endpoints.http_url

    @property
    def grpc_target(self) -> str:
        return self.endpoints.grpc_target

    @property
    def kafka_bootstrap(self) -> str:
        return self.endpoints.kafka_bootstrap

    @property
    def redis_url(self) -> str:
        return self.endpoints.redis_url

    @property
    def guardian_url(self) -> str | None:
        return self.endpoints.guardian_url

    @property
    def guard_check_url(self) -> str | None:
        return self.endpoints.guard_check_url

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Prometheus endpoint per running process (workers added later included)."""
        services = self.services
        if not services:  # not started yet: what start() will run
            return dict(self.endpoints.metrics_urls)
        return {name: s.spec.metrics_url for name, s in services.items() if s.spec.metrics_url}

    @property
    def worker_targets(self) -> dict[str, str]:
        """gRPC target per running worker."""
        return {name: s.spec.extra["grpc_target"] for name, s in self.services.items() if s.spec.kind == "worker"}

    def say(self, message: str) -> None:
        """Write a launcher line (`[lgc] ...`) to the log sink."""
        self._sink(f"[lgc] {message}")

    def write(self, text: str) -> None:
        """Write text to the log sink as it is, line by line (the endpoint listing of `lgc up`)."""
        for line in text.splitlines():
            self._sink(line)

    # ------------------------------------------------------------------ internals

    def _client_settings(self) -> ClusterSettings:
        s = self.settings
        values = {name: getattr(s, name) for name in ClusterSettings.model_fields}
        values.update(kafka_bootstrap=s.effective_kafka_bootstrap, redis_url=s.effective_redis_url)
        values["instance_id"] = "lgc-launcher"
        return ClusterSettings(**values)

    def _endpoints(self) -> ClusterEndpoints:
        s = self.settings
        guardian = f"http://{_connect_host(s.guardian_host)}:{s.guardian_http_port}" if s.start_guardian else None
        specs = [spec for kind in SERVICE_KINDS for spec in self._specs_of(kind, preview=True)]
        return ClusterEndpoints(
            http_url=f"http://{_connect_host(s.gateway_host)}:{s.gateway_http_port}",
            grpc_target=self._gateway_grpc_target(),
            kafka_bootstrap=s.effective_kafka_bootstrap,
            redis_url=s.effective_redis_url,
            qdrant=s.qdrant_url or f"local mode ({Path(s.state_dir) / 'qdrant'})",
            guardian_url=guardian,
            guard_check_url=f"{guardian}/v1/guard/check" if guardian else None,
            metrics_urls={spec.name: spec.metrics_url for spec in specs if spec.metrics_url},
            worker_targets={spec.name: spec.extra["grpc_target"] for spec in specs if spec.kind == "worker"},
        )

    def _gateway_grpc_target(self) -> str:
        return f"{_connect_host(self.settings.gateway_host)}:{self.settings.gateway_grpc_port}"

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in LauncherSettings.model_fields:
            if name == "instance_id":
                continue
            value = _env_value(getattr(self.settings, name))
            key = f"LGC_{name.upper()}"
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["LGC_KAFKA_BOOTSTRAP"] = self.settings.effective_kafka_bootstrap
        env["LGC_REDIS_URL"] = self.settings.effective_redis_url
        # No network at run time: nothing may download weights (DESIGN.md §2).
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.update(self.config.extra_env)
        return env

    def _specs_of(self, kind: ServiceKind, *, preview: bool = False) -> list[ServiceSpec]:
        s = self.settings
        if kind == "worker":
            indexes = range(s.workers) if preview else [self._take_worker_index() for _ in range(s.workers)]
            return [self._worker_spec(i) for i in indexes]
        if (kind == "guardian" and not s.start_guardian) or (kind == "scaler" and not s.start_scaler):
            return []
        host, port, extra = {
            "gateway": (s.gateway_host, s.gateway_http_port, {"grpc_target": self._gateway_grpc_target()}),
            "batcher": (s.batcher_host, s.batcher_metrics_port, {}),
            "guardian": (s.guardian_host, s.guardian_http_port, {}),
            "scaler": (s.scaler_host, s.scaler_metrics_port, {}),
        }[kind]
        base = f"http://{_connect_host(host)}:{port}"
        env: dict[str, str] = {}
        if not preview:
            env = {**self._base_env(), "LGC_INSTANCE_ID": f"{kind}-0"}
            if kind in ("gateway", "batcher") and s.start_guardian:
                # Blocking-mode answers are judged by this cluster's guardian, wherever its port
                # is (the gateway's and the batchers' checks); an explicit LGC_*_GUARDIAN_URL
                # (environment or extra_env) still wins.
                guardian = f"http://{_connect_host(s.guardian_host)}:{s.guardian_http_port}"
                env.setdefault(f"LGC_{kind.upper()}_GUARDIAN_URL", guardian)
        return [
            ServiceSpec(
                name=kind,
                kind=kind,
                argv=command_for(kind, self.config.python, self.config.commands),
                env=env,
                ready_url=f"{base}/ready",
                ready_timeout_s=s.service_ready_timeout_s,
                metrics_url=f"{base}/metrics",
                stop_stage=_STOP_STAGE[kind],
                extra=extra,
            )
        ]

    def _take_worker_index(self) -> int:
        with self._lock:
            index = self._next_worker
            self._next_worker += 1
            return index

    def _worker_spec(self, index: int) -> ServiceSpec:
        s = self.settings
        name = f"worker-{index}"
        grpc_port, metrics_port = s.worker_grpc_port + index, s.worker_metrics_port + index
        base = f"http://{_connect_host(s.worker_host)}:{metrics_port}"
        env = {
            **self._base_env(),
            "LGC_INSTANCE_ID": name,
            "LGC_WORKER_GRPC_PORT": str(grpc_port),
            "LGC_WORKER_METRICS_PORT": str(metrics_port),
        }
        # The embedded cluster's services share this machine's cores: the model's decode steps
        # get all but one of them unless LGC_WORKER_THREADS says otherwise, so that the broker,
        # gateway and batcher never hold up a step's barriers (see `embedded_worker_threads` and
        # the worker README, "CPU threads").
        env.setdefault("LGC_WORKER_THREADS", str(embedded_worker_threads()))
        return ServiceSpec(
            name=name,
            kind="worker",
            argv=command_for("worker", s.worker_python or self.config.python, self.config.commands),
            env=env,
            ready_url=f"{base}/ready",
            ready_timeout_s=s.worker_ready_timeout_s,
            metrics_url=f"{base}/metrics",
            stop_stage=_STOP_STAGE["worker"],
            extra={"grpc_target": f"{_connect_host(s.worker_host)}:{grpc_port}"},
        )

    def _claims(self, spec: ServiceSpec) -> list[PortClaim]:
        s = self.settings
        if spec.kind == "worker":
            index = int(spec.name.rsplit("-", 1)[1])
            return [
                PortClaim(
                    f"{spec.name} gRPC",
                    s.worker_host,
                    s.worker_grpc_port + index,
                    "set LGC_WORKER_GRPC_PORT (worker i uses it plus i)",
                ),
                PortClaim(
                    f"{spec.name} metrics",
                    s.worker_host,
                    s.worker_metrics_port + index,
                    "set LGC_WORKER_METRICS_PORT (worker i uses it plus i)",
                ),
            ]
        return {
            "gateway": [
                PortClaim("gateway HTTP", s.gateway_host, s.gateway_http_port, "set LGC_GATEWAY_HTTP_PORT"),
                PortClaim("gateway gRPC", s.gateway_host, s.gateway_grpc_port, "set LGC_GATEWAY_GRPC_PORT"),
            ],
            "batcher": [
                PortClaim("batcher metrics", s.batcher_host, s.batcher_metrics_port, "set LGC_BATCHER_METRICS_PORT")
            ],
            "guardian": [
                PortClaim("guardian HTTP", s.guardian_host, s.guardian_http_port, "set LGC_GUARDIAN_HTTP_PORT")
            ],
            "scaler": [
                PortClaim("scaler metrics", s.scaler_host, s.scaler_metrics_port, "set LGC_SCALER_METRICS_PORT")
            ],
        }[spec.kind]

    def _spawn(self, spec: ServiceSpec) -> ServiceProcess:
        with self._lock:
            if self._state == "stopping" or self._state == "stopped":
                raise StartAborted("the cluster is stopping")
            service = ServiceProcess(spec, self._sink, self._on_exit, tail_lines=self.config.tail_lines)
            self._services[spec.name] = service
        self.say(f"started {spec.name} (pid {service.pid}): {' '.join(spec.argv)}")
        return service

    def _on_exit(self, service: ServiceProcess) -> None:
        # Runs on the service's waiter thread once the process has been reaped.
        with self._lock:
            unexpected = not service.stopping and self._state in ("starting", "running")
            if unexpected:
                self._failed.append(service)
        if unexpected:
            self.say(f"{service.name} exited unexpectedly with code {service.popen.returncode}")
        self._changes.notify()

    def _report_ready(self, service: ServiceProcess, after_s: float) -> None:
        self.say(f"{service.name} ready after {after_s:.1f} s")

    def _stop_was_requested(self) -> bool:
        return self._stop_requested

    def _pause_unless_stopped(self, seconds: float) -> bool:
        seen = self._changes.snapshot()
        if not self._stop_requested:
            self._changes.wait(seen, seconds)
        return self._stop_requested

    def _stop_group(self, services: list[ServiceProcess]) -> None:
        """SIGTERM them all, wait up to the grace period (cut short by a second stop request),
        then SIGKILL their process groups (grandchildren included) and wait until they are gone."""
        for service in services:
            if service.alive():
                service.terminate()
        deadline = time.monotonic() + self.settings.stop_grace_s
        while True:
            seen = self._changes.snapshot()
            if self._force or all(not s.alive() for s in services):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = [s.name for s in services if s.alive()]
                self.say(f"{', '.join(late)} did not stop within {self.settings.stop_grace_s:.0f} s; killing")
                break
            self._changes.wait(seen, remaining)
        for service in services:
            service.kill()
        for service in services:
            if not service.exited.wait(_KILL_WAIT_S):
                self.say(f"{service.name} (pid {service.pid}) did not die after SIGKILL")
            service.flush_output()


def embedded_worker_threads(cores: int | None = None) -> int:
    """torch threads of an embedded worker's decode steps: every core this process may use but
    one, at least one. The worker then runs its decode thread real-time and its largest products
    on every core, and prefills beside the steps on the core left (services/worker/README.md,
    "CPU threads"); with every core decoding it does none of that and the broker, gateway and
    batcher preempt its threads at their barriers.

    Measured on 2 cores, SmolLM2-135M, 32 streams x 64 tokens through the whole cluster, output
    tokens/s: AVX-512 BF16 in bfloat16 (2026-12-02), one decode thread 163 and 184, two 112 and
    145; AVX2 only in float32 (2026-12-06, alternating invocations of 3 runs), one 175.4 and
    172.9, two 136.8 and 139.3. Until 2026-12-06 a CPU without bfloat16 instructions got every
    core: before the real-time decode thread and the wide products, one thread made 74-83 there.
    """
    usable = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, usable - 1)
