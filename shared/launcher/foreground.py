"""Running a cluster in the foreground until SIGINT/SIGTERM/SIGHUP or until a service dies: the
core of `lgc up`, kept apart from argument parsing so tests can drive it with fake services.

The main thread blocks in `EmbeddedCluster.wait()` (a condition variable, no sleep loop); the
signal handlers only call `request_stop()`, which is safe in a handler (no non-reentrant lock,
no I/O). A second signal cuts the stop's grace period short.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType

from shared.launcher.cluster import ClusterStartError, EmbeddedCluster, StartAborted

__all__ = [
    "EXIT_OK",
    "EXIT_SERVICE_DIED",
    "EXIT_START_FAILED",
    "EXIT_USAGE",
    "run_until_stopped",
]

#: Stopped on request (SIGINT, SIGTERM, SIGHUP), also when the request came during start-up.
EXIT_OK = 0
#: A service exited on its own while the cluster ran; everything was stopped.
EXIT_SERVICE_DIED = 1
#: Bad command line or invalid LGC_* settings.
EXIT_USAGE = 2
#: The cluster could not start (busy port, infrastructure, a service died or was not ready).
EXIT_START_FAILED = 3

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_until_stopped(cluster: EmbeddedCluster, on_ready: Callable[[EmbeddedCluster], None] | None = None) -> int:
    """Start the cluster, call `on_ready`, block until a stop signal or a service's death, stop
    everything and return the exit code. Call from the main thread (signal handlers live there)."""

    def _request_stop(signum: int, frame: FrameType | None) -> None:
        cluster.request_stop()

    previous = {sig: signal.signal(sig, _request_stop) for sig in _STOP_SIGNALS}
    try:
        try:
            cluster.start()
        except StartAborted:
            return EXIT_OK
        except ClusterStartError as exc:
            print(f"lgc: the cluster did not start: {exc}", file=sys.stderr, flush=True)
            return EXIT_START_FAILED
        if on_ready is not None:
            on_ready(cluster)
        failed = cluster.wait()
        if failed is not None:
            tail = "\n".join(f"    [{failed.name}] {line}" for line in failed.tail()[-20:])
            print(
                f"lgc: {failed.name} exited unexpectedly with code {failed.returncode}; stopping the cluster\n{tail}",
                file=sys.stderr,
                flush=True,
            )
            cluster.say("stopping (a service died); press Ctrl-C again to kill at once")
        else:
            cluster.say("stop requested; stopping (press Ctrl-C again to kill at once)")
        cluster.stop()
        return EXIT_SERVICE_DIED if failed is not None else EXIT_OK
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
