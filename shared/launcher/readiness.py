"""Waiting until started services answer ``GET /ready`` with 200.

All pending services are probed together, with a pause that grows from 50 ms to 1 s between
rounds. The pause is a wait on a change signal that any child's exit (or a stop request) notifies, so a
service that dies during start-up is reported at once, with its last output lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx

from shared.launcher.change_signal import ChangeSignal
from shared.launcher.service_process import ServiceProcess

__all__ = ["ServiceStartError", "StartAborted", "probe_ready", "wait_until_ready"]


class ServiceStartError(RuntimeError):
    """A service exited, or did not become ready in time, during start-up."""

    def __init__(self, service: ServiceProcess, reason: str) -> None:
        self.service = service
        self.reason = reason
        tail = service.tail()
        shown = "\n".join(f"    [{service.name}] {line}" for line in tail) if tail else "    (no output)"
        super().__init__(f"{service.name} {reason}; its last output lines:\n{shown}")


class StartAborted(RuntimeError):
    """A stop was requested (SIGINT/SIGTERM) while the cluster was starting."""


def probe_ready(client: httpx.Client, url: str) -> bool:
    """One readiness probe: True on HTTP 200."""
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        # Safe: not listening yet, or busy starting; the caller probes again after a pause.
        return False


def _timed_out(
    service: ServiceProcess, started: float, pending: dict[str, ServiceProcess], ready_at: dict[str, float]
) -> bool:
    """Whether `service` used up its readiness timeout, counted from its start or from the moment
    the last service it may wait for (`timeout_after`) became ready."""
    after = [name for name in service.spec.timeout_after if name != service.name]
    if any(name in pending for name in after):
        return False
    clock_start = max([started, *(ready_at[name] for name in after if name in ready_at)])
    return time.monotonic() - clock_start > service.spec.ready_timeout_s


def wait_until_ready(
    services: Sequence[ServiceProcess],
    changes: ChangeSignal,
    stop_requested: Callable[[], bool],
    on_ready: Callable[[ServiceProcess, float], None] = lambda s, t: None,
) -> None:
    """Block until every service is ready; ServiceStartError if one exits or times out first,
    StartAborted if `stop_requested()` turns true. `changes` is notified on any child exit or stop
    request, which ends the pause between probe rounds at once.
    """
    started = time.monotonic()
    pending = {s.name: s for s in services}
    ready_at: dict[str, float] = {}
    pause = 0.05
    with httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5)) as client:
        while pending:
            seen = changes.snapshot()  # taken before the checks, so a change during them still wakes
            if stop_requested():
                raise StartAborted("stop requested while starting")
            for name, service in list(pending.items()):
                if not service.alive():
                    service.flush_output()
                    raise ServiceStartError(service, f"exited with code {service.returncode} during start-up")
                if service.spec.ready_url is None or probe_ready(client, service.spec.ready_url):
                    del pending[name]
                    ready_at[name] = time.monotonic()
                    on_ready(service, ready_at[name] - started)
                elif _timed_out(service, started, pending, ready_at):
                    raise ServiceStartError(
                        service,
                        f"was not ready within {service.spec.ready_timeout_s:.0f} s "
                        f"(GET {service.spec.ready_url} never answered 200)",
                    )
            if pending:
                changes.wait(seen, pause)
                pause = min(pause * 1.5, 1.0)
