"""Port checks before anything starts (so a busy port fails with what to set, not with a child's
traceback), and free-port settings for tests that start a whole cluster."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.launcher.infra import bind_error, find_free_port
from shared.launcher.settings import LauncherSettings

__all__ = ["PortClaim", "PortInUseError", "check_ports_free", "free_port_settings", "port_in_use"]


@dataclass(frozen=True, slots=True)
class PortClaim:
    """A port the cluster is about to listen on, and the setting that moves it."""

    what: str
    host: str
    port: int
    remedy: str

    def describe(self) -> str:
        return f"{self.host}:{self.port} ({self.what}) is already in use: {self.remedy}"


class PortInUseError(RuntimeError):
    """One or more ports the cluster needs are taken."""

    def __init__(self, claims: list[PortClaim]) -> None:
        self.claims = claims
        super().__init__("cannot start the cluster:\n  " + "\n  ".join(c.describe() for c in claims))


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on (or holds) `host:port`; a port in TIME_WAIT counts as free."""
    error = bind_error(host, port, reuse_address=True)
    # Only "address in use" means busy; any other failure (an unknown host) is left for the
    # service itself to report.
    return error is not None and error.errno == errno.EADDRINUSE


def check_ports_free(claims: Iterable[PortClaim]) -> None:
    """Raise PortInUseError naming every busy port and the setting that moves it."""
    busy = [c for c in claims if port_in_use(c.host, c.port)]
    if busy:
        raise PortInUseError(busy)


def free_port_settings(*, spare_workers: int = 4, **overrides: Any) -> LauncherSettings:
    """LauncherSettings with every service port (and the embedded Kafka/Redis ports, unless an
    external one is given) on distinct free loopback ports, for tests; `overrides` are settings
    fields and win over the chosen ports.

    Worker ports are blocks of `workers + spare_workers` consecutive free ports, so that
    `EmbeddedCluster.add_worker()` has room.
    """
    workers = int(overrides.get("workers", 1))
    ports: dict[str, int] = {}
    for name in (
        "gateway_http_port",
        "gateway_grpc_port",
        "batcher_metrics_port",
        "guardian_http_port",
        "scaler_metrics_port",
        "embedded_kafka_port",
        "embedded_redis_port",
    ):
        ports[name] = find_free_port()
    for name in ("worker_grpc_port", "worker_metrics_port"):
        ports[name] = find_free_port(count=workers + spare_workers)
    return LauncherSettings(**{**ports, **overrides})
