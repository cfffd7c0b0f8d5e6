"""`lgc up` as a user runs it: the real CLI, real services (simulated worker backend, labelled as
such), a real request, then Ctrl-C (SIGINT) leaves no process behind."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from shared.launcher.ports import free_port_settings


def _reader(stream, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put("")


def test_lgc_up_serves_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    ports = free_port_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LGC_")}
    for name in (
        "embedded_kafka_port", "embedded_redis_port", "gateway_http_port", "gateway_grpc_port",
        "batcher_metrics_port", "worker_grpc_port", "worker_metrics_port", "guardian_http_port",
        "scaler_metrics_port",
    ):
        env[f"LGC_{name.upper()}"] = str(getattr(ports, name))
    env["LGC_STATE_DIR"] = str(tmp_path)
    env["LGC_KAFKA_SESSION_TIMEOUT_MS"] = "2000"
    lgc = Path(sys.executable).with_name("lgc")
    proc = subprocess.Popen(
        [str(lgc), "up", "--worker-backend", "simulated", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("Press Ctrl-C to stop." in line for line in output):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line, "lgc up exited before it was ready:\n" + "".join(output[-60:])
            output.append(line)
        banner = "".join(output)
        http_url = f"http://127.0.0.1:{ports.gateway_http_port}"
        assert f"{http_url}/v1" in banner and "curl -s" in banner
        for name in ("gateway", "batcher", "worker-0", "worker-1", "guardian", "scaler"):
            assert any(line.startswith(f"[{name}]") for line in output), f"no [{name}] log lines"

        models = httpx.get(f"{http_url}/v1/models", timeout=10).json()
        model = models["data"][0]["id"]
        reply = httpx.post(
            f"{http_url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 5

        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 8  # tansu, redis, gateway, batcher, 2 workers, guardian, scaler
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left behind: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
