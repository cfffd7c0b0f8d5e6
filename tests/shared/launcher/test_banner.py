"""What `lgc up` prints once the cluster is ready."""

from __future__ import annotations

import shlex

from shared.launcher.banner import describe_cluster, fallback_model_name, served_model_name
from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
from shared.launcher.infra import find_free_port
from shared.launcher.ports import free_port_settings
from tests.shared.launcher.conftest import fake_commands


def test_fallback_model_names() -> None:
    assert fallback_model_name("smollm2") == "SmolLM2-135M-Instruct"
    assert fallback_model_name("/models/Qwen2.5-0.5B-Instruct/") == "Qwen2.5-0.5B-Instruct"
    assert fallback_model_name("org/model-x") == "model-x"


def test_a_gateway_that_does_not_answer_gives_the_fallback() -> None:
    assert served_model_name(f"http://127.0.0.1:{find_free_port()}", "fallback-model", timeout_s=1) == "fallback-model"


def test_the_listing_names_every_endpoint_and_a_working_curl(tmp_path) -> None:
    settings = free_port_settings(workers=2, state_dir=tmp_path, worker_backend="simulated")
    with EmbeddedCluster(ClusterConfig(settings=settings, log_sink=lambda line: None, commands=fake_commands())) as cluster:
        # The fake gateway has no /v1/models: the configured model's name is shown.
        name = served_model_name(cluster.http_url, fallback_model_name(settings.model))
        text = describe_cluster(cluster, name)
    assert f"HTTP (OpenAI-compatible)  http://127.0.0.1:{settings.gateway_http_port}/v1" in text
    assert f"gRPC                      127.0.0.1:{settings.gateway_grpc_port}" in text
    assert f"127.0.0.1:{settings.embedded_kafka_port} (embedded Tansu)" in text
    assert f"redis://127.0.0.1:{settings.embedded_redis_port}/0 (embedded redis-server)" in text
    assert f"local mode ({tmp_path / 'qdrant'})" in text
    assert f"POST http://127.0.0.1:{settings.guardian_http_port}/v1/guard/check" in text
    for name_ in ("gateway", "batcher", "worker-0", "worker-1", "guardian", "scaler"):
        assert f"    {name_}" in text
    assert "2 worker(s), backend simulated, model SmolLM2-135M-Instruct" in text
    curl = next(line.strip() for line in text.splitlines() if "/v1/chat/completions" in line)
    argv = shlex.split(curl)
    assert argv[:2] == ["curl", "-s"] and argv[2] == f"http://127.0.0.1:{settings.gateway_http_port}/v1/chat/completions"
    assert '"model": "SmolLM2-135M-Instruct"' in argv[-1]
