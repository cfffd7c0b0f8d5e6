"""The infrastructure part of a cluster start: the embedded Tansu broker and redis-server (unless
LGC_KAFKA_BOOTSTRAP / LGC_REDIS_URL name external ones), and the cluster topics.

Qdrant needs nothing started: without LGC_QDRANT_URL the gateway opens qdrant-client's local mode
under the state directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from shared.launcher.infra import ManagedProcess, die_with_parent, start_redis, start_tansu
from shared.launcher.output import LogSink, OutputPump
from shared.launcher.ports import PortClaim
from shared.launcher.readiness import StartAborted
from shared.launcher.settings import LauncherSettings
from shared.settings import ClusterSettings
from shared.topics import Topics, ensure_topics

__all__ = ["InfraProcess", "create_cluster_topics", "infra_port_claims", "run_blocking", "start_embedded_infra"]

T = TypeVar("T")


@dataclass(slots=True)
class InfraProcess:
    """An embedded broker or redis-server and the thread copying its output."""

    process: ManagedProcess
    pump: OutputPump

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, grace_s: float) -> None:
        self.process.stop(grace_s=grace_s)
        self.pump.join(2.0)


def infra_port_claims(settings: LauncherSettings) -> list[PortClaim]:
    """The ports the embedded infrastructure will listen on (none for external infrastructure)."""
    claims = []
    if not settings.kafka_is_external:
        claims.append(
            PortClaim(
                "embedded Kafka broker (Tansu)",
                settings.embedded_kafka_host,
                settings.embedded_kafka_port,
                "another `lgc up` may be running; stop it, set LGC_EMBEDDED_KAFKA_PORT to a free port, "
                "or set LGC_KAFKA_BOOTSTRAP=host:port to use a running Kafka",
            )
        )
    if not settings.redis_is_external:
        claims.append(
            PortClaim(
                "embedded redis-server",
                settings.embedded_redis_host,
                settings.embedded_redis_port,
                "another `lgc up` may be running; stop it, set LGC_EMBEDDED_REDIS_PORT to a free port, "
                "or set LGC_REDIS_URL=redis://host:port/0 to use a running Redis",
            )
        )
    return claims


def start_embedded_infra(settings: LauncherSettings, sink: LogSink, *, tail_lines: int = 50) -> list[InfraProcess]:
    """Start whatever is embedded (Kafka, Redis) and wait until it accepts connections.

    On failure everything this call started is stopped again before the error propagates.
    """
    started: list[InfraProcess] = []
    try:
        if not settings.kafka_is_external:
            started.append(
                _attach(
                    start_tansu(
                        settings.embedded_kafka_host,
                        settings.embedded_kafka_port,
                        stdout=subprocess.PIPE,
                        timeout_s=settings.infra_ready_timeout_s,
                        preexec_fn=die_with_parent(),
                    ),
                    sink,
                    tail_lines,
                )
            )
        if not settings.redis_is_external:
            started.append(
                _attach(
                    start_redis(
                        settings.embedded_redis_host,
                        settings.embedded_redis_port,
                        stdout=subprocess.PIPE,
                        timeout_s=settings.infra_ready_timeout_s,
                        preexec_fn=die_with_parent(),
                    ),
                    sink,
                    tail_lines,
                )
            )
    except BaseException:
        for proc in reversed(started):
            proc.stop(grace_s=2.0)
        raise
    return started


def _attach(process: ManagedProcess, sink: LogSink, tail_lines: int) -> InfraProcess:
    assert process.popen.stdout is not None
    return InfraProcess(process, OutputPump(process.name, process.popen.stdout, sink, tail_lines=tail_lines).start())


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def create_cluster_topics(
    settings: ClusterSettings, timeout_s: float, *, pause_fn: Callable[[float], bool] = _sleep
) -> list[str]:
    """Create the cluster's shared topics (idempotent); retries while Kafka is unreachable.

    Returns the names it created. Raises RuntimeError once `timeout_s` has passed. `pause_fn(s)` waits
    between attempts and returns True to give up (StartAborted), e.g. when a stop was requested.
    """
    specs = Topics.from_settings(settings).cluster_topics(settings)
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return run_blocking(ensure_topics(settings, specs))
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            # Safe to retry: creating topics is idempotent and an external Kafka may still be
            # starting (compose init jobs); the deadline bounds the wait.
            if time.monotonic() + delay > deadline:
                raise RuntimeError(
                    f"could not create the cluster topics on {settings.kafka_bootstrap} within "
                    f"{timeout_s:.0f} s: {exc!r}"
                ) from exc
            if pause_fn(delay):
                raise StartAborted("stop requested while creating topics") from exc
            delay = min(delay * 2, 5.0)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also when the calling thread already
    runs an event loop (an async test calling the synchronous launcher): then on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # Safe: no loop in this thread, so asyncio.run may create one.
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lgc-launcher") as pool:
        return pool.submit(asyncio.run, coro).result()
