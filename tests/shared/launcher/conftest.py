"""Helpers for launcher tests: fake service commands, process liveness, topic listing."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.launcher.embedded_infra import run_blocking

FAKE_SERVICE = Path(__file__).with_name("fake_service.py")
#: The env var each fake reads its ready port from (what the real service listens on for /ready).
PORT_ENV = {
    "gateway": "LGC_GATEWAY_HTTP_PORT",
    "batcher": "LGC_BATCHER_METRICS_PORT",
    "worker": "LGC_WORKER_METRICS_PORT",
    "guardian": "LGC_GUARDIAN_HTTP_PORT",
    "scaler": "LGC_SCALER_METRICS_PORT",
}


def fake_commands(**extra: list[str]) -> dict[str, list[str]]:
    """A fake command line for every service kind; `extra[kind]` adds fake options to one kind."""
    return {kind: [sys.executable, str(FAKE_SERVICE), env, *extra.get(kind, [])] for kind, env in PORT_ENV.items()}


def process_gone(pid: int) -> bool:
    """True when no process (other than a zombie awaiting its reaper) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True  # vanished between the two checks
    return state == "Z"


def list_topics(bootstrap: str) -> set[str]:
    async def _list() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return run_blocking(_list())


@pytest.fixture
def lines() -> list[str]:
    """A list sink for cluster output."""
    return []


@pytest.fixture
def assert_all_gone() -> Callable[[dict[str, int]], None]:
    def check(pids: dict[str, int]) -> None:
        alive = {name: pid for name, pid in pids.items() if not process_gone(pid)}
        assert not alive, f"processes left behind: {alive}"

    return check
