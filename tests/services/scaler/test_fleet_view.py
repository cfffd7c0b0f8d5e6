"""FleetView: latest snapshot per worker, stale ones forgotten."""

from __future__ import annotations

from services.scaler.fleet_view import FleetView
from shared.records import MetricsSnapshot


def _snap(instance: str, at: float, service: str = "worker", **values: float) -> MetricsSnapshot:
    return MetricsSnapshot(service=service, instance=instance, values=values, created_at=at)


def test_keeps_the_latest_snapshot_per_worker_and_ignores_other_services() -> None:
    view = FleetView(ttl_s=30)
    assert view.update(_snap("w0", 100, running=2, waiting=1, capacity=8))
    assert view.update(_snap("w0", 105, running=5, waiting=0, capacity=8))
    assert not view.update(_snap("w0", 101, running=9))  # older than what is held
    assert not view.update(_snap("gateway-0", 105, service="gateway", running=100))
    [load] = view.live(now=110)
    assert (load.instance, load.running, load.waiting, load.capacity) == ("w0", 5, 0, 8)


def test_stale_workers_are_dropped() -> None:
    view = FleetView(ttl_s=10)
    view.update(_snap("w0", 100, running=1))
    view.update(_snap("w1", 108, running=1))
    assert [w.instance for w in view.live(now=109)] == ["w0", "w1"]
    assert [w.instance for w in view.live(now=111)] == ["w1"]  # w0 is 11 s old
    assert view.live(now=200) == []


def test_missing_or_nonsense_values_are_tolerated() -> None:
    view = FleetView(ttl_s=10)
    view.update(_snap("w0", 100, running=-3, capacity=0))
    [load] = view.live(now=100)
    assert (load.running, load.waiting, load.capacity) == (0, 0, None)


def test_finish_and_failure_rates_are_kept_for_the_error_rate() -> None:
    view = FleetView(ttl_s=10)
    view.update(_snap("w0", 100, running=1, finished_per_s=4.0, failed_per_s=1.0))
    [load] = view.live(now=100)
    assert (load.finished_per_s, load.failed_per_s) == (4.0, 1.0)
