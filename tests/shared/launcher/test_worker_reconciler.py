"""WorkerReconciler against the real Redis, with a stand-in cluster that records what it is asked
(starting real worker processes is the embedded-cluster test's job, in tests/services/scaler)."""

from __future__ import annotations

import threading

import redis

from shared.launcher.worker_reconciler import (
    WorkerReconciler,
    current_workers_key,
    desired_workers_channel,
    desired_workers_key,
)


class RecordingCluster:
    """Workers by name; every add/stop is recorded and signalled."""

    def __init__(self, workers: int) -> None:
        self.workers = [f"worker-{i}" for i in range(workers)]
        self.next = workers
        self.log: list[str] = []
        self.changed = threading.Condition()

    def worker_names(self) -> list[str]:
        with self.changed:
            return list(self.workers)

    def add_worker(self) -> object:
        with self.changed:
            name = f"worker-{self.next}"
            self.next += 1
            self.workers.append(name)
            self.log.append(f"+{name}")
            self.changed.notify_all()
        return type("Service", (), {"name": name})()

    def stop_worker(self, name: str) -> int | None:
        with self.changed:
            self.workers.remove(name)
            self.log.append(f"-{name}")
            self.changed.notify_all()
        return 0

    def wait_for(self, count: int, timeout_s: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.workers) == count, timeout_s)


def _ask(client: redis.Redis, prefix: str, value: object) -> None:
    client.set(desired_workers_key(prefix), value)
    client.publish(desired_workers_channel(prefix), str(value))


def test_converges_on_the_desired_count_and_stops_the_newest_first(redis_url: str, unique_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(desired_workers_key(unique_prefix), 7)  # left by a previous run: must be ignored
    cluster = RecordingCluster(workers=2)
    lines: list[str] = []
    # A long refresh: only the published message can wake the reconciler in time.
    reconciler = WorkerReconciler(cluster, redis_url, prefix=unique_prefix, refresh_s=60.0, say=lines.append)
    reconciler.start()
    try:
        assert client.get(desired_workers_key(unique_prefix)) is None
        assert client.get(current_workers_key(unique_prefix)) == b"2"

        _ask(client, unique_prefix, 4)
        assert cluster.wait_for(4), cluster.log
        _ask(client, unique_prefix, 1)
        assert cluster.wait_for(1), cluster.log
        assert cluster.log == ["+worker-2", "+worker-3", "-worker-3", "-worker-2", "-worker-1"]
        assert cluster.workers == ["worker-0"]
        assert any("draining and stopping worker-3" in line for line in lines)
    finally:
        reconciler.stop(timeout_s=10)
    assert client.get(current_workers_key(unique_prefix)) == b"1"
    client.close()


def test_malformed_or_absent_counts_leave_the_fleet_alone(redis_url: str, unique_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cluster = RecordingCluster(workers=2)
    lines: list[str] = []
    reconciler = WorkerReconciler(cluster, redis_url, prefix=unique_prefix, refresh_s=60.0, say=lines.append)
    # No background thread here: it would re-read the key on its own schedule and race with the
    # values this test writes; reconcile_once() is the same code path it runs.
    try:
        assert reconciler.reconcile_once() == 0  # nothing asked yet
        client.set(desired_workers_key(unique_prefix), "many")
        assert reconciler.reconcile_once() == 0
        assert any("malformed" in line for line in lines)
        client.set(desired_workers_key(unique_prefix), 1_000)  # capped at 64, not 1000
        assert reconciler.desired() == 64
    finally:
        reconciler.stop(timeout_s=10)
    assert cluster.log == []
    client.close()


def test_stop_wakes_the_blocked_thread_at_once(redis_url: str, unique_prefix: str) -> None:
    reconciler = WorkerReconciler(RecordingCluster(workers=1), redis_url, prefix=unique_prefix, refresh_s=600.0)
    reconciler.start()
    thread = reconciler._thread
    reconciler.stop(timeout_s=10)
    assert thread is not None and not thread.is_alive()
