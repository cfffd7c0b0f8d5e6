"""The launcher's side of the scaler's `local` actuator: converge the embedded cluster's worker
processes on the count the scaler asks for.

The scaler runs in its own process and cannot call `EmbeddedCluster` directly, so they share a
small control channel in Redis (names under a prefix, the topic prefix by default):

* ``<prefix>:scaler:desired:worker`` — the desired worker count, written by the scaler;
* ``<prefix>:scaler:desired`` — pub/sub channel; the scaler publishes the count after each write;
* ``<prefix>:scaler:current:worker`` — the count of worker processes the launcher runs, written by
  the reconciler after every change, so the scaler knows what exists (not just what reports).

`WorkerReconciler` runs one thread that blocks on the channel (with a periodic refresh of the key,
in case a message was missed while Redis reconnected), and converges one worker at a time:
`add_worker()` starts a worker and waits until it is ready (it registers and the batchers route to
it); `stop_worker()` stops the newest worker first with SIGTERM, and the worker drains its in-flight
requests (it is marked draining in the registry first, so it gets no new work) before it exits.
The desired key left by a previous run is deleted at start: only this run's scaler decides.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import redis

__all__ = [
    "ScalableCluster",
    "WorkerReconciler",
    "current_workers_key",
    "desired_workers_channel",
    "desired_workers_key",
]

#: Most workers the reconciler ever runs, whatever the key says (LauncherSettings.workers' bound).
MAX_WORKERS = 64


def desired_workers_key(prefix: str) -> str:
    """Redis key holding the desired worker count (an integer as text)."""
    return f"{prefix}:scaler:desired:worker"


def current_workers_key(prefix: str) -> str:
    """Redis key holding the number of worker processes the launcher runs."""
    return f"{prefix}:scaler:current:worker"


def desired_workers_channel(prefix: str) -> str:
    """Pub/sub channel announcing a new desired count."""
    return f"{prefix}:scaler:desired"


class ScalableCluster(Protocol):
    """What the reconciler needs of `EmbeddedCluster`."""

    def worker_names(self) -> list[str]: ...

    def add_worker(self) -> object: ...

    def stop_worker(self, name: str) -> int | None: ...


def _index(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        # Safe: a worker named otherwise sorts first, so it is stopped last.
        return -1


class WorkerReconciler:
    """Converges the cluster's workers on the desired count; `start()`, then `stop()`."""

    def __init__(
        self,
        cluster: ScalableCluster,
        redis_url: str,
        *,
        prefix: str,
        refresh_s: float = 5.0,
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self._cluster = cluster
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=max(refresh_s * 2, 10.0))
        self._prefix = prefix
        self._refresh_s = refresh_s
        self._say = say
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    @property
    def desired_key(self) -> str:
        return desired_workers_key(self._prefix)

    @property
    def channel(self) -> str:
        return desired_workers_channel(self._prefix)

    def start(self) -> None:
        """Clear a stale desired count, publish the current one, start the thread."""
        self._redis.delete(self.desired_key)
        self._publish_current()
        self._thread = threading.Thread(target=self._run, name="lgc-worker-reconciler", daemon=True)
        self._thread.start()
        self._say(f"worker reconciler listening on redis channel {self.channel} (scaler actuator: local)")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop converging (a worker start or drain under way finishes first, up to `timeout_s`)."""
        self._stopping.set()
        try:
            self._redis.publish(self.channel, "stop")  # wakes the blocked subscriber at once
        except redis.RedisError:
            # Safe: Redis may already be gone; the subscriber then wakes at its next refresh.
            pass
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._redis.close()

    def desired(self) -> int | None:
        """The desired count in Redis (None when unset or not a number)."""
        raw = self._redis.get(self.desired_key)
        if raw is None:
            return None
        try:
            return max(0, min(MAX_WORKERS, int(raw)))
        except ValueError:
            # Safe: a malformed value is ignored (and said), the fleet stays as it is.
            self._say(f"ignoring malformed desired worker count {raw!r} in {self.desired_key}")
            return None

    def reconcile_once(self) -> int:
        """Converge on the desired count now; returns the number of workers started (+) or
        stopped (-)."""
        changed = 0
        while not self._stopping.is_set():
            desired = self.desired()
            workers = sorted(self._cluster.worker_names(), key=_index)
            if desired is None or desired == len(workers):
                break
            if desired > len(workers):
                service = self._cluster.add_worker()
                self._say(f"scaler wants {desired} worker(s): started {getattr(service, 'name', 'a worker')}")
                changed += 1
            else:
                newest = workers[-1]
                self._say(f"scaler wants {desired} worker(s): draining and stopping {newest}")
                code = self._cluster.stop_worker(newest)
                self._say(f"{newest} stopped (exit code {code})")
                changed -= 1
            self._publish_current()
        return changed

    def _publish_current(self) -> None:
        self._redis.set(current_workers_key(self._prefix), len(self._cluster.worker_names()))

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(self.channel)
                    while not self._stopping.is_set():
                        self.reconcile_once()
                        # Blocks until the scaler publishes (or the refresh is due): no polling loop.
                        pubsub.get_message(timeout=self._refresh_s)
            except (redis.RedisError, RuntimeError, KeyError, OSError) as exc:
                # Safe: Redis went away or a worker failed to start/stop (the cluster already
                # reported which); the next round tries again from the actual state.
                self.errors += 1
                if not self._stopping.is_set():
                    self._say(f"worker reconciler: {type(exc).__name__}: {exc}; retrying")
                    self._stopping.wait(self._refresh_s)
