"""The embedded cluster, started once per test session: real Tansu, real Redis, a real worker
with the real SmolLM2 model, and every service as its own OS process, as `lgc up` starts them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
from shared.launcher.ports import free_port_settings
from tests.conftest import model_cache_dir

#: The model the embedded cluster serves by default.
MODEL = "SmolLM2-135M-Instruct"


class LogCollector:
    """Keeps every line the cluster's processes print (shown when a test fails)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="session")
def cluster_logs() -> LogCollector:
    return LogCollector()


@pytest.fixture(scope="session")
def cluster(cluster_logs: LogCollector) -> Iterator[EmbeddedCluster]:
    # The converted model is cached in the usual state dir, so repeated runs skip the conversion.
    state_dir = model_cache_dir()
    settings = free_port_settings(
        topic_prefix="lgc",
        kafka_session_timeout_ms=2_000,  # Tansu joins a group in about half of it
        workers=1,
        worker_backend="transformers",
        model="smollm2",
        state_dir=state_dir,
        log_format="text",
    )
    cluster = EmbeddedCluster(ClusterConfig(settings=settings, log_sink=cluster_logs))
    try:
        cluster.start()
    except Exception:
        print("\n".join(cluster_logs.lines[-200:]))
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the cluster's last log lines to a failing integration test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "cluster_logs" in getattr(item, "fixturenames", ()):
        logs = item.funcargs.get("cluster_logs")
        if logs is not None:
            report.sections.append(("cluster log (last 150 lines)", "\n".join(logs.lines[-150:])))


@pytest.fixture(autouse=True)
def _cluster_log_on_failure(cluster_logs: LogCollector) -> LogCollector:
    """Every integration test carries the cluster log, so a failure shows it."""
    return cluster_logs


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
