"""The worker's settings come from the LGC_* variables the launcher sets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.worker.settings import WorkerSettings


def test_defaults() -> None:
    s = WorkerSettings()
    assert (s.worker_backend, s.model, s.worker_host, s.worker_grpc_port, s.worker_metrics_port) == (
        "transformers", "smollm2", "127.0.0.1", 50061, 9201,
    )
    assert (s.worker_max_batch_size, s.worker_dtype, s.worker_device, s.worker_max_model_len) == (32, "auto", "auto", 2048)
    assert (s.worker_registry_ttl_s, s.worker_drain_timeout_s) == (10.0, 60.0)
    assert (s.simulated_tokens_per_s, s.simulated_ttft_ms, s.worker_threads) == (50.0, 50.0, None)


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "LGC_WORKER_BACKEND": "simulated",
        "LGC_MODEL": "/models/x",
        "LGC_WORKER_HOST": "0.0.0.0",
        "LGC_WORKER_ADVERTISE_HOST": "worker-3",
        "LGC_WORKER_GRPC_PORT": "6000",
        "LGC_WORKER_METRICS_PORT": "6001",
        "LGC_WORKER_MAX_BATCH_SIZE": "8",
        "LGC_WORKER_DTYPE": "float32",
        "LGC_WORKER_DEVICE": "cuda:1",
        "LGC_WORKER_MAX_MODEL_LEN": "512",
        "LGC_WORKER_THREADS": "4",
        "LGC_WORKER_REGISTRY_TTL_S": "5",
        "LGC_WORKER_DRAIN_TIMEOUT_S": "7",
        "LGC_SIMULATED_TOKENS_PER_S": "123",
        "LGC_SIMULATED_TTFT_MS": "9",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = WorkerSettings()
    assert (s.worker_backend, s.model, s.worker_host, s.worker_advertise_host) == ("simulated", "/models/x", "0.0.0.0", "worker-3")
    assert (s.worker_grpc_port, s.worker_metrics_port, s.worker_max_batch_size) == (6000, 6001, 8)
    assert (s.worker_dtype, s.worker_device, s.worker_max_model_len, s.worker_threads) == ("float32", "cuda:1", 512, 4)
    assert (s.worker_registry_ttl_s, s.worker_drain_timeout_s) == (5.0, 7.0)
    assert (s.simulated_tokens_per_s, s.simulated_ttft_ms) == (123.0, 9.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LGC_WORKER_BACKEND", "onnx"),
        ("LGC_WORKER_DEVICE", "tpu"),
        ("LGC_WORKER_DTYPE", "int4"),
        ("LGC_WORKER_MAX_BATCH_SIZE", "0"),
        ("LGC_WORKER_GRPC_PORT", "70000"),
        ("LGC_WORKER_GRPC_PORT", "-1"),
        ("LGC_SIMULATED_TOKENS_PER_S", "0"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_every_field_is_documented() -> None:
    for name, field in WorkerSettings.model_fields.items():
        assert field.description, f"{name} has no docstring"
