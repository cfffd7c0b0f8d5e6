"""The scaler's `local` actuator in a real embedded cluster (real gateway, batcher, scaler; workers
on the `simulated` backend, which is labelled as such): a load step adds a worker that serves
traffic, the end of the load removes it (drained), and no request fails throughout."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
from shared.launcher.ports import free_port_settings

#: Small, slow workers so that a few concurrent requests fill them: 4 sequences each, 20 tokens/s.
SCALER_ENV = {
    "LGC_WORKER_MAX_BATCH_SIZE": "4",
    "LGC_SIMULATED_TOKENS_PER_S": "20",
    "LGC_SIMULATED_TTFT_MS": "20",
    "LGC_GATEWAY_CACHE_ENABLED": "false",
    "LGC_GATEWAY_SEMANTIC_CACHE_ENABLED": "false",
    "LGC_SCALER_INTERVAL_S": "0.5",
    "LGC_SCALER_MIN_REPLICAS": "1",
    "LGC_SCALER_MAX_REPLICAS": "2",
    "LGC_SCALER_SCALE_UP_WINDOW_S": "0",
    "LGC_SCALER_SCALE_DOWN_WINDOW_S": "4",
    "LGC_SCALER_LAG_TARGET_PER_REPLICA": "4",
    "LGC_SCALER_PREDICTION_HORIZON_S": "0",
    "LGC_SCALER_SNAPSHOT_TTL_S": "3",
}
MAX_TOKENS = 20  # 1 s per request at 20 tokens/s


def _stream(client: httpx.Client, index: int) -> tuple[int, int]:
    """One streaming chat completion; returns (status, completion tokens reported in usage)."""
    body = {
        "model": "simulated",
        "messages": [{"role": "user", "content": f"request number {index}"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage = 0
    with client.stream("POST", "/v1/chat/completions", json=body, timeout=120) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, 0
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
    return 200, usage


def _worker_tokens(url: str) -> float:
    """lgc_worker_output_tokens_total summed over labels, from a worker's /metrics (0 while the
    worker is still starting)."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.ConnectError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("lgc_worker_output_tokens_total")
    )


def test_a_load_step_adds_a_worker_that_serves_and_the_end_of_load_removes_it(tmp_path: Path) -> None:
    settings = free_port_settings(
        workers=1,
        worker_backend="simulated",
        state_dir=tmp_path,
        start_guardian=False,
        kafka_session_timeout_ms=2_000,
        metrics_interval_s=0.5,
        scaler_actuator="local",
        scaler_reconcile_refresh_s=5.0,
        stop_grace_s=30.0,
    )
    lines: list[str] = []
    cluster = EmbeddedCluster(ClusterConfig(settings=settings, log_sink=lines.append, extra_env=SCALER_ENV))
    results: list[tuple[int, int]] = []
    results_lock = threading.Lock()
    load_on = threading.Event()
    load_on.set()

    def client_loop(slot: int) -> None:
        with httpx.Client(base_url=cluster.http_url) as client:
            n = 0
            while load_on.is_set():
                outcome = _stream(client, slot * 1_000 + n)
                with results_lock:
                    results.append(outcome)
                n += 1

    with cluster:
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(client_loop, slot) for slot in range(16)]
            try:
                # The load step: 16 clients on one worker of 4 slots. Wait for the second worker.
                deadline = time.monotonic() + 30
                while "worker-1" not in cluster.worker_names() and time.monotonic() < deadline:
                    cluster.wait(timeout_s=0.2)
                assert "worker-1" in cluster.worker_names(), "no worker added under load:\n" + "\n".join(lines[-60:])
                served = 0.0
                metrics_url = cluster.metrics_urls["worker-1"]
                while served == 0 and time.monotonic() < deadline + 15:
                    cluster.wait(timeout_s=0.5)
                    served = _worker_tokens(metrics_url)
                assert served > 0, "the added worker served no tokens"
                time.sleep(2)  # some more load on both workers
            finally:
                load_on.clear()
            for future in futures:
                future.result()
        # The end of the load: after the 4 s scale-down window the newest worker is drained away.
        deadline = time.monotonic() + 30
        while "worker-1" in cluster.services and time.monotonic() < deadline:
            cluster.wait(timeout_s=0.2)
        assert "worker-1" not in cluster.services, "the added worker was not removed:\n" + "\n".join(lines[-40:])
        assert cluster.worker_names() == ["worker-0"]
        assert cluster.failed == []
        # The remaining worker still serves.
        with httpx.Client(base_url=cluster.http_url) as client:
            assert _stream(client, 99_999) == (200, MAX_TOKENS)
        elapsed = time.monotonic() - t0

    assert results, "no request was sent"
    failures = [r for r in results if r != (200, MAX_TOKENS)]
    assert not failures, f"{len(failures)} of {len(results)} requests failed or came back short: {failures[:5]}"
    assert any("draining and stopping worker-1" in line for line in lines)
    assert elapsed < 90
