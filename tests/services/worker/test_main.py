"""`python -m services.worker` as the launcher runs it: a subprocess configured by LGC_* variables."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import redis.asyncio as aioredis

from shared.launcher.infra import find_free_port
from shared.protos import worker_pb2, worker_pb2_grpc
from shared.settings import ClusterSettings
from shared.worker_registry import WorkerInfo, WorkerRegistry


def worker_env(cluster: ClusterSettings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "LGC_KAFKA_BOOTSTRAP": cluster.kafka_bootstrap,
        "LGC_REDIS_URL": cluster.redis_url,
        "LGC_TOPIC_PREFIX": cluster.topic_prefix,
        "LGC_STATE_DIR": str(cluster.state_dir),
        "LGC_LOG_FORMAT": "text",
        "LGC_WORKER_GRPC_PORT": str(find_free_port()),
        "LGC_WORKER_METRICS_PORT": str(find_free_port()),
        "LGC_WORKER_REGISTRY_TTL_S": "3",
    }
    env.update(extra)
    return env


async def wait_registered(cluster: ClusterSettings, worker_id: str, proc: subprocess.Popen, timeout_s: float) -> WorkerInfo:
    client = aioredis.from_url(cluster.redis_url)
    registry = WorkerRegistry(client, prefix=cluster.topic_prefix)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "worker exited"
                for info in await registry.list():
                    if info.worker_id == worker_id:
                        return info
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def registered_ids(cluster: ClusterSettings) -> list[str]:
    client = aioredis.from_url(cluster.redis_url)
    try:
        return [w.worker_id for w in await WorkerRegistry(client, prefix=cluster.topic_prefix).list()]
    finally:
        await client.aclose()


def start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def test_simulated_worker_serves_drains_on_sigterm_and_exits_zero(cluster_settings: ClusterSettings) -> None:
    env = worker_env(
        cluster_settings,
        LGC_WORKER_BACKEND="simulated",
        LGC_INSTANCE_ID="sim-worker-1",
        LGC_SIMULATED_TOKENS_PER_S="40",
        LGC_WORKER_MAX_BATCH_SIZE="3",
    )
    proc = start(env)
    try:
        info = await wait_registered(cluster_settings, "sim-worker-1", proc, 30)
        assert info.simulated and info.capacity == 3
        assert info.address == f"127.0.0.1:{env['LGC_WORKER_GRPC_PORT']}"
        async with grpc.aio.insecure_channel(info.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            item = worker_pb2.WorkItem(request_id="r", prompt="hi", params=worker_pb2.SamplingParams(max_new_tokens=20))
            call = stub.Generate(worker_pb2.GenerateRequest(items=[item]))
            assert (await call.read()).WhichOneof("event") == "delta"
            proc.send_signal(signal.SIGTERM)
            events = []
            while (event := await call.read()) is not grpc.aio.EOF:
                events.append(event)
        # The in-flight request finished during the drain.
        assert events[-1].finished.completion_tokens == 20
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
        assert "sim-worker-1" not in await registered_ids(cluster_settings)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_transformers_worker_from_env(cluster_settings: ClusterSettings, model_state_dir: Path) -> None:
    env = worker_env(
        cluster_settings,
        LGC_INSTANCE_ID="tf-worker-1",
        LGC_STATE_DIR=str(model_state_dir),
        LGC_MODEL="smollm2",
        LGC_WORKER_BACKEND="transformers",
    )
    proc = start(env)
    try:
        info = await wait_registered(cluster_settings, "tf-worker-1", proc, 120)
        assert (info.model, info.backend, info.simulated) == ("SmolLM2-135M-Instruct", "transformers", False)
        async with grpc.aio.insecure_channel(info.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            item = worker_pb2.WorkItem(request_id="r", prompt="1, 2, 3,", params=worker_pb2.SamplingParams(max_new_tokens=4))
            events = [e async for e in stub.Generate(worker_pb2.GenerateRequest(items=[item]))]
        assert events[-1].finished.completion_tokens == 4
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert "tf-worker-1" not in await registered_ids(cluster_settings)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_invalid_settings_exit_2(cluster_settings: ClusterSettings) -> None:
    env = worker_env(cluster_settings, LGC_WORKER_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-m", "services.worker"], env=env, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"worker_backend" in result.stderr


def test_vllm_without_vllm_is_refused_clearly(cluster_settings: ClusterSettings) -> None:
    env = worker_env(cluster_settings, LGC_WORKER_BACKEND="vllm")
    result = subprocess.run([sys.executable, "-m", "services.worker"], env=env, capture_output=True, timeout=60)
    assert result.returncode == 1
    assert b"LGC_WORKER_BACKEND=vllm needs vLLM" in result.stderr


def test_a_precision_the_device_cannot_run_is_refused_at_start(cluster_settings: ClusterSettings) -> None:
    env = worker_env(cluster_settings, LGC_WORKER_DEVICE="cpu", LGC_WORKER_QUANTIZATION="nf4")
    result = subprocess.run([sys.executable, "-m", "services.worker"], env=env, capture_output=True, timeout=60)
    assert result.returncode == 1
    assert b"nf4 needs bitsandbytes on a CUDA device" in result.stderr
