"""EmbeddedCluster with the scaler's `local` actuator: its reconciler follows the desired count in
Redis (fake services here; the real scaler and workers are in tests/services/scaler)."""

from __future__ import annotations

import time

import redis

from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
from shared.launcher.ports import free_port_settings
from shared.launcher.worker_reconciler import current_workers_key, desired_workers_channel, desired_workers_key
from tests.shared.launcher.conftest import fake_commands, process_gone


def _workers(cluster: EmbeddedCluster) -> set[str]:
    """Worker processes the cluster holds (a stopping one until it has exited)."""
    return {name for name, s in cluster.services.items() if s.spec.kind == "worker"}


def _wait_for_workers(cluster: EmbeddedCluster, names: set[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _workers(cluster) != names and time.monotonic() < deadline:
        cluster.wait(timeout_s=0.1)  # blocks on the cluster's change signal (or 0.1 s)
    assert _workers(cluster) == names


def test_local_actuator_starts_and_drains_workers_on_request(tmp_path, lines, assert_all_gone) -> None:
    settings = free_port_settings(
        workers=1, state_dir=tmp_path, start_guardian=False, scaler_actuator="local",
        scaler_reconcile_refresh_s=30.0,
    )
    cluster = EmbeddedCluster(ClusterConfig(settings=settings, log_sink=lines.append, commands=fake_commands()))
    with cluster:
        assert cluster.reconciler is not None
        client = redis.Redis.from_url(cluster.redis_url)
        prefix = settings.topic_prefix
        assert client.get(current_workers_key(prefix)) == b"1"
        client.set(desired_workers_key(prefix), 2)
        client.publish(desired_workers_channel(prefix), "2")
        _wait_for_workers(cluster, {"worker-0", "worker-1"})
        added = cluster.services["worker-1"].pid

        client.set(desired_workers_key(prefix), 1)
        client.publish(desired_workers_channel(prefix), "1")
        _wait_for_workers(cluster, {"worker-0"})
        assert process_gone(added)
        assert cluster.wait(timeout_s=0.1) is None  # a worker stopped on purpose is no failure
        client.close()
        pids = cluster.pids
    assert any("draining and stopping worker-1" in line for line in lines)
    assert_all_gone(pids)


def test_without_the_local_actuator_there_is_no_reconciler(tmp_path, lines) -> None:
    settings = free_port_settings(workers=1, state_dir=tmp_path, start_guardian=False)
    assert settings.scaler_actuator == "dry-run"
    with EmbeddedCluster(ClusterConfig(settings=settings, log_sink=lines.append, commands=fake_commands())) as cluster:
        assert cluster.reconciler is None


def test_lgc_up_reads_the_actuator_from_the_environment_and_passes_it_to_the_scaler(monkeypatch) -> None:
    from shared.launcher.cli import build_parser, settings_from_args

    monkeypatch.setenv("LGC_SCALER_ACTUATOR", "local")
    settings = settings_from_args(build_parser().parse_args(["up", "--worker-backend", "simulated"]))
    assert settings.scaler_actuator == "local"
    env = EmbeddedCluster(ClusterConfig(settings=settings))._base_env()
    assert env["LGC_SCALER_ACTUATOR"] == "local"
