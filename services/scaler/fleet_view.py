"""The scaler's view of the workers: the latest MetricsSnapshot of each, until it goes stale."""

from __future__ import annotations

from services.scaler.policy import WorkerLoad
from shared.records import MetricsSnapshot

__all__ = ["FleetView"]


class FleetView:
    """Latest load per worker instance; snapshots older than `ttl_s` (by their `created_at`, so a
    replay of old records after a restart is not mistaken for live workers) are dropped."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._latest: dict[str, tuple[float, WorkerLoad]] = {}

    def update(self, snapshot: MetricsSnapshot) -> bool:
        """Take a snapshot into account; returns False for other services' snapshots and for
        snapshots older than the one already held for the same worker."""
        if snapshot.service != "worker":
            return False
        held = self._latest.get(snapshot.instance)
        if held is not None and held[0] > snapshot.created_at:
            return False
        values = snapshot.values
        capacity = values.get("capacity")
        self._latest[snapshot.instance] = (
            snapshot.created_at,
            WorkerLoad(
                instance=snapshot.instance,
                running=max(0.0, values.get("running", 0.0)),
                waiting=max(0.0, values.get("waiting", 0.0)),
                capacity=capacity if capacity is not None and capacity > 0 else None,
                finished_per_s=max(0.0, values.get("finished_per_s", 0.0)),
                failed_per_s=max(0.0, values.get("failed_per_s", 0.0)),
            ),
        )
        return True

    def live(self, now: float) -> list[WorkerLoad]:
        """Workers whose latest snapshot is younger than the TTL at wall-clock time `now`; the
        stale ones are forgotten."""
        stale = [name for name, (at, _) in self._latest.items() if now - at > self.ttl_s]
        for name in stale:
            del self._latest[name]
        return [load for _, load in sorted(self._latest.values(), key=lambda item: item[1].instance)]
