"""LauncherSettings: defaults, env names shared with the services, embedded vs external infra."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.launcher.settings import LauncherSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LGC_KAFKA_BOOTSTRAP", "LGC_REDIS_URL", "LGC_WORKERS", "LGC_GATEWAY_HTTP_PORT", "LGC_EMBEDDED_KAFKA_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_start_embedded_infra_on_the_default_addresses() -> None:
    s = LauncherSettings()
    assert not s.kafka_is_external and not s.redis_is_external
    assert s.effective_kafka_bootstrap == "127.0.0.1:19092"
    assert s.effective_redis_url == "redis://127.0.0.1:16379/0"
    assert (s.gateway_http_port, s.gateway_grpc_port, s.guardian_http_port) == (8000, 50051, 8090)
    assert (s.batcher_metrics_port, s.scaler_metrics_port) == (9101, 9102)
    assert (s.worker_grpc_port, s.worker_metrics_port) == (50061, 9201)
    assert (s.workers, s.worker_backend, s.model) == (1, "transformers", "smollm2")


def test_environment_names_are_the_services_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_GATEWAY_HTTP_PORT", "8100")
    monkeypatch.setenv("LGC_WORKERS", "3")
    s = LauncherSettings()
    assert s.gateway_http_port == 8100
    assert s.workers == 3


def test_kafka_bootstrap_in_the_environment_means_external(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_KAFKA_BOOTSTRAP", "kafka:9092")
    s = LauncherSettings()
    assert s.kafka_is_external and not s.redis_is_external
    assert s.effective_kafka_bootstrap == "kafka:9092"


def test_embedded_ports_can_move(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_EMBEDDED_KAFKA_PORT", "29092")
    s = LauncherSettings(embedded_redis_port=26379)
    assert s.effective_kafka_bootstrap == "127.0.0.1:29092"
    assert s.effective_redis_url == "redis://127.0.0.1:26379/0"


@pytest.mark.parametrize(
    "field, value",
    [("workers", -1), ("worker_backend", "llamacpp"), ("gateway_http_port", 70000), ("worker_ready_timeout_s", 0)],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        LauncherSettings(**{field: value})
