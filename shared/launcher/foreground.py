"""Running a cluster in the foreground until SIGINT/SIGTERM/SIGHUP or until a service dies: the
core of `lgc up`, kept apart from argument parsing so tests can drive it with fake services.

The main thread blocks in `EmbeddedCluster.wait()` (a condition variable, no sleep loop). Stop
signals reach the cluster through `_SignalRelay`: the C-level handler writes the signal's number
to a pipe (`signal.set_wakeup_fd`), and a thread blocked on that pipe calls `request_stop()`.
Calling `request_stop()` from the Python-level handler would not be safe:

* the handler runs in the main thread between any two bytecodes, also inside
  `Condition.wait_for` after it found nothing changed and before it sleeps; a notify from there
  is lost and the main thread sleeps for good (CI saw a SIGTERM right after start-up hang `lgc
  up`);
* a signal the kernel hands to another thread does not wake a main thread blocked on a lock at
  all; its Python handler waits for the main thread's next bytecode.

A second signal cuts the stop's grace period short.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

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
#: What `signal.signal` takes and returns.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _SignalRelay:
    """While open: each stop signal, whichever thread the kernel gives it to, becomes one
    `request_stop()` call on an ordinary thread (see the module docstring for why)."""

    def __init__(self, cluster: EmbeddedCluster) -> None:
        self._cluster = cluster
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd's requirement: a handler never blocks
        self._previous_fd = -1
        self._previous_handlers: dict[signal.Signals, _Handler] = {}
        self._thread = threading.Thread(target=self._relay, name="lgc-signal-relay", daemon=True)

    def open(self) -> None:
        """Install the handlers and the wakeup pipe (main thread only)."""
        self._thread.start()
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        # A Python-level handler must exist for the C-level one to write the pipe; the relay
        # thread does the work.
        self._previous_handlers = {sig: signal.signal(sig, _noted_by_relay) for sig in _STOP_SIGNALS}

    def close(self) -> None:
        """Put the previous handlers and wakeup fd back, end the relay thread."""
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the relay reads end-of-file and returns
        self._thread.join(5)

    def _relay(self) -> None:
        stop_numbers = {int(sig) for sig in _STOP_SIGNALS}
        try:
            while data := os.read(self._read_fd, 64):
                for number in data:
                    if number in stop_numbers:
                        self._cluster.request_stop()
        finally:
            os.close(self._read_fd)


def _noted_by_relay(signum: int, frame: FrameType | None) -> None:
    """The Python-level stop handler: nothing to do here, `_SignalRelay` acts on the signal."""


def run_until_stopped(cluster: EmbeddedCluster, on_ready: Callable[[EmbeddedCluster], None] | None = None) -> int:
    """Start the cluster, call `on_ready`, block until a stop signal or a service's death, stop
    everything and return the exit code. Call from the main thread (signal handlers live there)."""
    relay = _SignalRelay(cluster)
    relay.open()
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
        relay.close()
