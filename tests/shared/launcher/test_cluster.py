"""EmbeddedCluster against real processes: embedded Tansu and redis-server, fake services (the
real gateway/batcher/worker are exercised by the integration suite)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import redis

from shared.launcher.cluster import ClusterConfig, ClusterStartError, EmbeddedCluster, embedded_worker_threads
from shared.launcher.ports import free_port_settings
from shared.topics import Topics
from tests.shared.launcher.conftest import fake_commands, list_topics, process_gone


def _cluster(tmp_path, lines: list[str], commands=None, **settings) -> EmbeddedCluster:
    settings.setdefault("state_dir", tmp_path / "state")
    return EmbeddedCluster(
        ClusterConfig(settings=free_port_settings(**settings), log_sink=lines.append, commands=commands or fake_commands())
    )


def test_embedded_cluster_starts_infra_topics_and_services_and_stop_leaves_nothing(tmp_path, lines, assert_all_gone) -> None:
    cluster = _cluster(tmp_path, lines, workers=2)
    with cluster:
        pids = cluster.pids
        assert set(pids) == {"kafka", "redis", "gateway", "batcher", "worker-0", "worker-1", "guardian", "scaler"}
        assert {s.spec.kind for s in cluster.services.values()} == {"gateway", "batcher", "worker", "guardian", "scaler"}

        # Real infrastructure on the settings' embedded ports, with the cluster topics.
        s = cluster.settings
        assert cluster.kafka_bootstrap == f"127.0.0.1:{s.embedded_kafka_port}"
        expected = {spec.name for spec in Topics().cluster_topics(cluster.client_settings)}
        assert expected <= list_topics(cluster.kafka_bootstrap)
        assert redis.Redis.from_url(cluster.redis_url).ping()

        # Every service is reachable where the endpoints say.
        assert httpx.get(cluster.http_url + "/ready").status_code == 200
        assert cluster.grpc_target == f"127.0.0.1:{s.gateway_grpc_port}"
        assert cluster.guard_check_url == f"http://127.0.0.1:{s.guardian_http_port}/v1/guard/check"
        assert set(cluster.metrics_urls) == {"gateway", "batcher", "worker-0", "worker-1", "guardian", "scaler"}
        for url in cluster.metrics_urls.values():
            assert httpx.get(url).text == "fake_up 1\n"
        assert cluster.worker_targets == {
            "worker-0": f"127.0.0.1:{s.worker_grpc_port}",
            "worker-1": f"127.0.0.1:{s.worker_grpc_port + 1}",
        }

    # Each child got its own instance id, the embedded bootstrap, and its output was prefixed.
    assert f"[worker-1] fake worker-1 starting on port {s.worker_metrics_port + 1} kafka={cluster.kafka_bootstrap}" in lines
    assert "[gateway] fake gateway-0 stopping" in lines
    assert any(line.startswith("[kafka] ") for line in lines)
    assert_all_gone(pids)


def test_external_kafka_and_redis_are_used_not_started(tmp_path, lines, kafka_bootstrap, redis_url, unique_prefix) -> None:
    cluster = _cluster(
        tmp_path,
        lines,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=unique_prefix,
        workers=1,
        start_guardian=False,
        start_scaler=False,
    )
    with cluster:
        assert cluster.infra == []
        assert set(cluster.pids) == {"gateway", "batcher", "worker-0"}
        assert cluster.kafka_bootstrap == kafka_bootstrap and cluster.redis_url == redis_url
        assert f"{unique_prefix}.results" in list_topics(kafka_bootstrap)
        assert cluster.guard_check_url is None
    port = cluster.settings.batcher_metrics_port
    assert f"[batcher] fake batcher-0 starting on port {port} kafka={kafka_bootstrap}" in lines


def test_a_service_that_dies_during_start_is_reported_with_its_last_lines(tmp_path, lines, assert_all_gone) -> None:
    cluster = _cluster(tmp_path, lines, commands=fake_commands(worker=["--crash-with", "3"]))
    started = time.monotonic()
    with pytest.raises(ClusterStartError) as info:
        cluster.start()
    assert time.monotonic() - started < 20  # reported at once, not after the 300 s worker timeout
    message = str(info.value)
    assert "worker-0 exited with code 3 during start-up" in message
    assert "[worker-0] fatal: worker-0 cannot start (simulated)" in message
    assert_all_gone(cluster.pids)


def test_a_service_that_never_gets_ready_times_out(tmp_path, lines, assert_all_gone) -> None:
    cluster = _cluster(
        tmp_path, lines, commands=fake_commands(batcher=["--never-ready"]), service_ready_timeout_s=1.5
    )
    with pytest.raises(ClusterStartError, match=r"batcher was not ready within 2 s \(GET http://127.0.0.1:\d+/ready"):
        cluster.start()
    assert_all_gone(cluster.pids)


def test_gateway_and_batcher_timeouts_start_once_the_workers_are_ready(tmp_path, lines) -> None:
    # The worker needs 2 s (a model conversion, say); the gateway becomes ready 0.5 s after that,
    # beyond its own 1.5 s timeout counted from launch, but within it counted from the worker.
    commands = fake_commands(worker=["--ready-after", "2"], gateway=["--ready-after", "2.5"])
    with _cluster(tmp_path, lines, commands=commands, service_ready_timeout_s=1.5) as cluster:
        assert httpx.get(cluster.http_url + "/ready").status_code == 200
    # The guardian does not wait for workers: its own timeout counts from launch.
    commands = fake_commands(worker=["--ready-after", "2"], guardian=["--ready-after", "2.5"])
    with pytest.raises(ClusterStartError, match="guardian was not ready within 2 s"):
        _cluster(tmp_path, lines, commands=commands, service_ready_timeout_s=1.5).start()


def test_a_busy_embedded_kafka_port_fails_with_what_to_set(tmp_path, lines) -> None:
    cluster = _cluster(tmp_path, lines)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.settings.embedded_kafka_port))
        squatter.listen()
        with pytest.raises(ClusterStartError) as info:
            cluster.start()
    message = str(info.value)
    assert f"127.0.0.1:{cluster.settings.embedded_kafka_port} (embedded Kafka broker (Tansu)) is already in use" in message
    assert "LGC_KAFKA_BOOTSTRAP" in message and "LGC_EMBEDDED_KAFKA_PORT" in message
    assert cluster.pids == {}  # nothing was started


def test_stop_kills_services_that_ignore_sigterm_and_their_children(tmp_path, lines, assert_all_gone) -> None:
    cluster = _cluster(
        tmp_path, lines, commands=fake_commands(scaler=["--ignore-sigterm", "--grandchild"]), stop_grace_s=1.0
    )
    cluster.start()
    grandchild = next(int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("[scaler] grandchild pid"))
    pids = cluster.pids
    started = time.monotonic()
    cluster.stop()
    assert 0.9 < time.monotonic() - started < 15
    assert any("scaler did not stop within 1 s; killing" in line for line in lines)
    assert_all_gone({**pids, "grandchild": grandchild})
    assert cluster.services["scaler"].returncode == -9


def test_wait_returns_a_service_that_dies_while_running(tmp_path, lines, assert_all_gone) -> None:
    cluster = _cluster(tmp_path, lines, commands=fake_commands(worker=["--die-after", "1"]))
    with cluster:
        failed = cluster.wait(timeout_s=30)
        assert failed is not None and failed.name == "worker-0"
        assert failed.returncode == 7
        assert "worker-0 dying on purpose" in failed.tail()
        assert cluster.failed == [failed]
    assert_all_gone(cluster.pids)


def test_request_stop_wakes_wait_without_polling(tmp_path, lines) -> None:
    with _cluster(tmp_path, lines, workers=0, start_guardian=False, start_scaler=False) as cluster:
        assert cluster.wait(timeout_s=0.2) is None  # nothing happened: the timeout ends it
        threading.Timer(0.3, cluster.request_stop).start()
        started = time.monotonic()
        assert cluster.wait() is None
        assert time.monotonic() - started < 5


def test_add_and_stop_worker(tmp_path, lines, assert_all_gone) -> None:
    with _cluster(tmp_path, lines, workers=1, start_guardian=False, start_scaler=False) as cluster:
        added = cluster.add_worker()
        assert added.name == "worker-1"
        assert added.spec.env["LGC_WORKER_THREADS"] == str(embedded_worker_threads())
        assert httpx.get(added.spec.ready_url).status_code == 200
        assert set(cluster.worker_targets) == {"worker-0", "worker-1"}
        first = cluster.services["worker-0"].pid
        assert cluster.stop_worker("worker-0") == 0
        assert process_gone(first)
        assert set(cluster.worker_targets) == {"worker-1"}
        assert cluster.wait(timeout_s=0.1) is None  # a worker stopped on purpose is no failure
        with pytest.raises(KeyError):
            cluster.stop_worker("gateway")
        pids = cluster.pids
    assert_all_gone(pids)


def test_embedded_workers_leave_one_core_to_the_other_services() -> None:
    assert [embedded_worker_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]


def test_an_explicit_worker_thread_count_wins(tmp_path, lines) -> None:
    config = ClusterConfig(
        settings=free_port_settings(state_dir=tmp_path / "state"),
        log_sink=lines.append,
        commands=fake_commands(),
        extra_env={"LGC_WORKER_THREADS": "7"},
    )
    spec = EmbeddedCluster(config)._worker_spec(0)  # the spec only: nothing is started
    assert spec.env["LGC_WORKER_THREADS"] == "7"


def test_workers_run_under_the_worker_python(tmp_path, lines, assert_all_gone) -> None:
    # The "interpreter" is a script that records how it was called and then runs the fake worker:
    # the workers (and only they) must be started as `<worker_python> -m services.worker`.
    calls = tmp_path / "calls.txt"
    worker_command = " ".join(fake_commands()["worker"])
    interpreter = tmp_path / "other-python"
    interpreter.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {worker_command}\n')
    interpreter.chmod(0o755)
    commands = {kind: argv for kind, argv in fake_commands().items() if kind != "worker"}
    with _cluster(
        tmp_path, lines, commands=commands, workers=2, start_guardian=False, start_scaler=False,
        worker_python=str(interpreter),
    ) as cluster:
        assert set(cluster.worker_targets) == {"worker-0", "worker-1"}
        assert all(httpx.get(s.spec.ready_url).status_code == 200 for n, s in cluster.services.items() if n.startswith("worker"))
        pids = cluster.pids
    assert calls.read_text().splitlines() == ["-m services.worker", "-m services.worker"]
    assert_all_gone(pids)


def test_a_bad_command_is_a_start_error(tmp_path, lines, assert_all_gone) -> None:
    cluster = _cluster(tmp_path, lines, commands={**fake_commands(), "scaler": ["/nonexistent/lgc-scaler"]})
    with pytest.raises(ClusterStartError, match="nonexistent"):
        cluster.start()
    assert_all_gone(cluster.pids)


def test_the_real_guardian_and_scaler_run_under_the_launcher(tmp_path, lines, assert_all_gone) -> None:
    """The launcher's environment is what the guardian and scaler read (ports, bootstrap, ids)."""
    commands = {k: v for k, v in fake_commands().items() if k not in ("guardian", "scaler")}
    cluster = _cluster(tmp_path, lines, commands=commands, workers=1)
    with cluster:
        check = httpx.post(cluster.guard_check_url, json={"text": "mail jane@example.com", "kind": "response"})
        assert check.status_code == 200 and check.json()["redacted_text"] == "mail <EMAIL>"
        assert "lgc_scaler_desired_replicas" in httpx.get(cluster.metrics_urls["scaler"]).text
        pids = cluster.pids
    assert cluster.services["guardian"].returncode == 0 and cluster.services["scaler"].returncode == 0
    assert any(line.startswith("[guardian] ") and "guardian ready" in line for line in lines)
    assert any(line.startswith("[scaler] ") and "scaler stopped" in line for line in lines)
    assert_all_gone(pids)
