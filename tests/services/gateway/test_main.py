"""`python -m services.gateway` as operators run it: starts, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from shared.launcher.infra import find_free_port, wait_for_port
from shared.settings import ClusterSettings


def test_runs_and_stops_on_sigterm(cluster_settings: ClusterSettings) -> None:
    http_port, grpc_port = find_free_port(), find_free_port()
    env = {
        **os.environ,
        "LGC_KAFKA_BOOTSTRAP": cluster_settings.kafka_bootstrap,
        "LGC_REDIS_URL": cluster_settings.redis_url,
        "LGC_TOPIC_PREFIX": cluster_settings.topic_prefix,
        "LGC_GATEWAY_HTTP_PORT": str(http_port),
        "LGC_GATEWAY_GRPC_PORT": str(grpc_port),
        "LGC_INSTANCE_ID": "gw-main",
        "LGC_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", http_port, 30, proc)
        deadline = time.monotonic() + 15
        while httpx.get(f"http://127.0.0.1:{http_port}/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        wait_for_port("127.0.0.1", grpc_port, 5, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    lines = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.startswith("{")]
    messages = [(line["level"], line["msg"]) for line in lines]
    assert any(level == "warning" and "runs OPEN" in msg for level, msg in messages)
    assert ("info", "gateway stopped") in messages
    assert all(line["service"] == "gateway" and line["instance"] == "gw-main" for line in lines)
