"""The `lgc` command line: argument parsing, settings precedence, `topics create`, `version`."""

from __future__ import annotations

import pytest

from shared.launcher.cli import build_parser, main, settings_from_args
from shared.launcher.foreground import EXIT_OK, EXIT_START_FAILED, EXIT_USAGE
from shared.launcher.infra import find_free_port
from tests.shared.launcher.conftest import list_topics


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LGC_LOG_FORMAT", "LGC_WORKERS", "LGC_WORKER_BACKEND", "LGC_KAFKA_BOOTSTRAP", "LGC_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)


def _settings(*argv: str):
    return settings_from_args(build_parser().parse_args(["up", *argv]))


def test_up_options_become_settings() -> None:
    s = _settings("--workers", "3", "--worker-backend", "simulated", "--model", "/models/x", "--no-guardian")
    assert (s.workers, s.worker_backend, s.model) == (3, "simulated", "/models/x")
    assert s.start_guardian is False and s.start_scaler is True
    assert s.worker_python is None
    assert _settings("--worker-python", "/venvs/vllm/bin/python").worker_python == "/venvs/vllm/bin/python"


def test_up_logs_text_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings().log_format == "text"
    assert _settings("--log-format", "json").log_format == "json"
    monkeypatch.setenv("LGC_LOG_FORMAT", "json")
    assert _settings().log_format == "json"


def test_options_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_WORKERS", "4")
    monkeypatch.setenv("LGC_WORKER_BACKEND", "simulated")
    s = _settings("--workers", "2")
    assert (s.workers, s.worker_backend) == (2, "simulated")


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["up", "--worker-backend", "llamacpp"])
    assert info.value.code == EXIT_USAGE
    assert main(["up", "--workers", "-1"]) == EXIT_USAGE  # valid syntax, invalid setting
    assert "invalid settings" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("lgc 0.")


def test_topics_create_is_idempotent(monkeypatch, capsys, kafka_bootstrap, unique_prefix) -> None:
    monkeypatch.setenv("LGC_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("LGC_TOPIC_PREFIX", unique_prefix)
    assert main(["topics", "create"]) == EXIT_OK
    assert "9 created" in capsys.readouterr().out
    assert {f"{unique_prefix}.requests.high", f"{unique_prefix}.scaling"} <= list_topics(kafka_bootstrap)
    assert main(["topics", "create"]) == EXIT_OK
    assert "0 created" in capsys.readouterr().out


def test_topics_create_without_kafka_exits_3(monkeypatch, capsys) -> None:
    monkeypatch.setenv("LGC_KAFKA_BOOTSTRAP", f"127.0.0.1:{find_free_port()}")
    assert main(["topics", "create", "--timeout", "1"]) == EXIT_START_FAILED
    assert "could not create the cluster topics" in capsys.readouterr().err
