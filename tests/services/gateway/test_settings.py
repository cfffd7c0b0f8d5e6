"""GatewaySettings: environment variables, defaults, constraints, documentation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.records import Priority
from shared.settings import ClusterSettings

from services.gateway.settings import GatewaySettings


def test_defaults_match_the_documented_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LGC_GATEWAY_HTTP_PORT", "LGC_GATEWAY_GRPC_PORT", "LGC_GATEWAY_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = GatewaySettings()
    assert isinstance(settings, ClusterSettings)
    assert (settings.gateway_host, settings.gateway_http_port, settings.gateway_grpc_port) == ("127.0.0.1", 8000, 50051)
    assert settings.gateway_request_timeout_s == 300
    assert settings.gateway_max_inflight == 1024
    assert settings.gateway_max_body_bytes == 1_048_576
    assert settings.gateway_max_prompt_chars == 100_000
    assert (settings.gateway_max_tokens_limit, settings.gateway_default_max_tokens) == (4096, 256)
    assert settings.gateway_default_priority is Priority.NORMAL
    assert settings.gateway_max_choices == 16


def test_read_from_lgc_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_GATEWAY_HTTP_PORT", "18000")
    monkeypatch.setenv("LGC_GATEWAY_GRPC_PORT", "15051")
    monkeypatch.setenv("LGC_GATEWAY_DEFAULT_PRIORITY", "low")
    monkeypatch.setenv("LGC_GATEWAY_MAX_INFLIGHT", "7")
    settings = GatewaySettings()
    assert (settings.gateway_http_port, settings.gateway_grpc_port) == (18000, 15051)
    assert settings.gateway_default_priority is Priority.LOW
    assert settings.gateway_max_inflight == 7


@pytest.mark.parametrize(
    "bad",
    [
        {"gateway_http_port": 70_000},
        {"gateway_max_inflight": 0},
        {"gateway_request_timeout_s": 0},
        {"gateway_default_priority": "urgent"},
        {"gateway_max_body_bytes": 10},
        {"gateway_max_prompt_chars": 300_000},
        {"gateway_max_choices": 0},
        {"gateway_max_choices": 129},  # OpenAI's own maximum is 128
    ],
)
def test_constraints(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(**bad)


def test_every_field_is_documented() -> None:
    for name, field in GatewaySettings.model_fields.items():
        assert field.description, f"{name} has no docstring"
