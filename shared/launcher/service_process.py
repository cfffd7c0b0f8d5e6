"""One cluster service run as its own OS process: how to start it, copy its output, notice when it
exits, and stop its whole process group.

Exits are noticed by a thread blocked in ``waitpid`` (not by polling), which then calls back the
cluster; the cluster waits on events, never on sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from shared.launcher.infra import die_with_parent
from shared.launcher.output import LogSink, OutputPump

__all__ = ["ServiceProcess", "ServiceSpec", "command_for"]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What to run and how to tell that it is ready."""

    name: str
    """Unique process name, also the prefix of its output lines (`gateway`, `worker-0`)."""
    kind: str
    """Which service it is (`gateway`, `batcher`, `worker`, `guardian`, `scaler`)."""
    argv: tuple[str, ...]
    """The command line."""
    env: Mapping[str, str]
    """The complete environment of the process."""
    ready_url: str | None
    """HTTP URL that answers 200 once the service is ready (None: ready once started)."""
    ready_timeout_s: float
    """How long it may take to become ready."""
    metrics_url: str | None = None
    """Its Prometheus endpoint, for operators."""
    stop_stage: int = 0
    """Services are stopped stage by stage, lowest first (front to back, so each can drain)."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Other addresses worth showing (e.g. a worker's gRPC target)."""
    timeout_after: tuple[str, ...] = ()
    """Services whose readiness this one may wait for: its readiness timeout only starts once they
    are ready (a gateway or batcher that reports ready only with a worker does not time out while
    the first worker converts its model)."""


class ServiceProcess:
    """A started service; `exited` is set once the process has ended (and was reaped)."""

    def __init__(
        self,
        spec: ServiceSpec,
        sink: LogSink,
        on_exit: Callable[[ServiceProcess], None],
        *,
        tail_lines: int = 50,
    ) -> None:
        self.spec = spec
        self.exited = threading.Event()
        #: Set when the launcher stops it on purpose, so its exit is not reported as a failure.
        self.stopping = False
        self._on_exit = on_exit
        self.popen = subprocess.Popen(
            list(spec.argv),
            env=dict(spec.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group: stopping it also reaches anything it spawned, and a Ctrl-C
            # in the terminal reaches only the launcher, which then stops services in order.
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        assert self.popen.stdout is not None
        self._pump = OutputPump(spec.name, self.popen.stdout, sink, tail_lines=tail_lines).start()
        self._waiter = threading.Thread(target=self._wait, name=f"wait-{spec.name}", daemon=True)
        self._waiter.start()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited (negative: killed by that signal)."""
        return self.popen.returncode if self.exited.is_set() else None

    def alive(self) -> bool:
        return not self.exited.is_set()

    def tail(self) -> list[str]:
        """Its last output lines."""
        return self._pump.tail()

    def terminate(self) -> None:
        """SIGTERM its process group (the service drains and exits)."""
        self.stopping = True
        _signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL its process group, including children that outlived it."""
        self.stopping = True
        _signal_group(self.pid, signal.SIGKILL)

    def flush_output(self, timeout_s: float = 2.0) -> None:
        """Wait (briefly) until its last output lines reached the sink."""
        self._pump.join(timeout_s)

    def _wait(self) -> None:
        self.popen.wait()
        self.exited.set()
        self._on_exit(self)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # Safe: the whole group is gone already.
    except PermissionError:
        pass  # Safe: the id now belongs to someone else's group; ours has ended.


def command_for(kind: str, python: str, overrides: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The command line of a service: an override for its kind, else `python -m services.<kind>`."""
    if kind in overrides:
        return tuple(overrides[kind])
    return (python, "-m", f"services.{kind}")
